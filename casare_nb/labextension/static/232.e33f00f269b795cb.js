"use strict";(self.rspackChunkcasare_nb=self.rspackChunkcasare_nb||[]).push([[232],{475(e,r,a){var t=a(601),o=a.n(t),n=a(314),s=(a.n(n))()(o());s.push([e.id,`/* casare_nb lab extension: the "Submit this notebook" dialog. */

.casare-submit-form {
  display: flex;
  flex-direction: column;
  gap: 10px;
  min-width: 360px;
  max-width: 560px;
}

.casare-submit-form .casare-param {
  display: flex;
  flex-direction: column;
  gap: 3px;
}

.casare-submit-form .casare-param-head,
.casare-submit-form .casare-param-checkline {
  display: flex;
  align-items: baseline;
  gap: 8px;
}

.casare-submit-form .casare-param-checkline {
  justify-content: flex-start;
  align-items: center;
}

.casare-submit-form .casare-param-checkline input[type='checkbox'] {
  flex: none;
  width: auto;
  margin: 0;
}

.casare-submit-form .casare-param-label {
  font-weight: 600;
}

.casare-submit-form .casare-param-type {
  color: var(--jp-ui-font-color2);
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-ui-font-size0);
}

.casare-submit-form input.jp-mod-styled,
.casare-submit-form select.jp-mod-styled {
  width: 100%;
  box-sizing: border-box;
}

.casare-submit-form .casare-param.casare-mod-error input.jp-mod-styled,
.casare-submit-form .casare-param.casare-mod-error select.jp-mod-styled {
  border-color: var(--jp-error-color1);
}

.casare-submit-form .casare-param-error,
.casare-submit-form .casare-submit-error {
  color: var(--jp-error-color1);
  font-size: var(--jp-ui-font-size1);
  white-space: pre-wrap;
}

.casare-submit-form .casare-submit-error {
  padding: 4px 6px;
  border-left: 3px solid var(--jp-error-color1);
  background: var(--jp-error-color3, transparent);
}

.casare-submit-form [hidden] {
  display: none;
}
`,""]),a.d(r,{},{A:s})},314(e){e.exports=function(e){var r=[];return r.toString=function(){return this.map(function(r){var a="",t=void 0!==r[5];return r[4]&&(a+="@supports (".concat(r[4],") {")),r[2]&&(a+="@media ".concat(r[2]," {")),t&&(a+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),a+=e(r),t&&(a+="}"),r[2]&&(a+="}"),r[4]&&(a+="}"),a}).join("")},r.i=function(e,a,t,o,n){"string"==typeof e&&(e=[[null,e,void 0]]);var s={};if(t)for(var c=0;c<this.length;c++){var i=this[c][0];null!=i&&(s[i]=!0)}for(var p=0;p<e.length;p++){var u=[].concat(e[p]);t&&s[u[0]]||(void 0!==n&&(void 0===u[5]||(u[1]="@layer".concat(u[5].length>0?" ".concat(u[5]):""," {").concat(u[1],"}")),u[5]=n),a&&(u[2]&&(u[1]="@media ".concat(u[2]," {").concat(u[1],"}")),u[2]=a),o&&(u[4]?(u[1]="@supports (".concat(u[4],") {").concat(u[1],"}"),u[4]=o):u[4]="".concat(o)),r.push(u))}},r}},601(e){e.exports=function(e){return e[1]}},72(e){var r=[];function a(e){for(var a=-1,t=0;t<r.length;t++)if(r[t].identifier===e){a=t;break}return a}function t(e,t){for(var o={},n=[],s=0;s<e.length;s++){var c=e[s],i=t.base?c[0]+t.base:c[0],p=o[i]||0,u="".concat(i," ").concat(p);o[i]=p+1;var l=a(u),m={css:c[1],media:c[2],sourceMap:c[3],supports:c[4],layer:c[5]};if(-1!==l)r[l].references++,r[l].updater(m);else{var f=function(e,r){var a=r.domAPI(r);return a.update(e),function(r){r?(r.css!==e.css||r.media!==e.media||r.sourceMap!==e.sourceMap||r.supports!==e.supports||r.layer!==e.layer)&&a.update(e=r):a.remove()}}(m,t);t.byIndex=s,r.splice(s,0,{identifier:u,updater:f,references:1})}n.push(u)}return n}e.exports=function(e,o){var n=t(e=e||[],o=o||{});return function(e){e=e||[];for(var s=0;s<n.length;s++){var c=a(n[s]);r[c].references--}for(var i=t(e,o),p=0;p<n.length;p++){var u=a(n[p]);0===r[u].references&&(r[u].updater(),r.splice(u,1))}n=i}}},659(e){var r={};e.exports=function(e,a){var t=function(e){if(void 0===r[e]){var a=document.querySelector(e);if(window.HTMLIFrameElement&&a instanceof window.HTMLIFrameElement)try{a=a.contentDocument.head}catch(e){a=null}r[e]=a}return r[e]}(e);if(!t)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");t.appendChild(a)}},540(e){e.exports=function(e){var r=document.createElement("style");return e.setAttributes(r,e.attributes),e.insert(r,e.options),r}},56(e,r,a){e.exports=function(e){var r=a.nc;r&&e.setAttribute("nonce",r)}},825(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=e.insertStyleElement(e);return{update:function(a){var t,o,n;t="",a.supports&&(t+="@supports (".concat(a.supports,") {")),a.media&&(t+="@media ".concat(a.media," {")),(o=void 0!==a.layer)&&(t+="@layer".concat(a.layer.length>0?" ".concat(a.layer):""," {")),t+=a.css,o&&(t+="}"),a.media&&(t+="}"),a.supports&&(t+="}"),(n=a.sourceMap)&&"u">typeof btoa&&(t+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),e.styleTagTransform(t,r,e.options)},remove:function(){var e;null===(e=r).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,r){if(r.styleSheet)r.styleSheet.cssText=e;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(e))}}},579(e,r,a){var t=a(72),o=a.n(t),n=a(825),s=a.n(n),c=a(659),i=a.n(c),p=a(56),u=a.n(p),l=a(540),m=a.n(l),f=a(113),d=a.n(f),v=a(475),h={};h.styleTagTransform=d(),h.setAttributes=u(),h.insert=i().bind(null,"head"),h.domAPI=s(),h.insertStyleElement=m(),o()(v.A,h),v.A&&v.A.locals&&v.A.locals}}]);