// The graph editor's front end, an anywidget view (casare_nb/widgets/graph_view.py):
// a palette of node templates, an SVG canvas of nodes and edges, a side panel that
// edits the selected node (or the workflow's inputs) and a toolbar. Plain DOM + SVG,
// no imports. The contract with Python is docs/graph-editor.md, "The widget (anywidget)":
// traits palette, graph, problems, status, message, path; the view sends `graph` once a
// gesture ends and custom messages {"action": "save" | "run" | "layout" | "rerun" | "reset",
// "node"?}.

const SVG_NS = "http://www.w3.org/2000/svg";
const HEADER_H = 42; // the node's id and template name
const PORT_H = 20; // one row of ports
const PORT_TOP = 4; // space between the header and the first port row
const MIN_W = 150;
const MAX_W = 300;
const STATES = ["queued", "running", "ok", "failed", "skipped"];
const INPUT_TYPES = ["string", "integer", "number", "boolean", "list", "mapping"];
const CODE_TEMPLATE = "code.python";
const NOTE_TEMPLATE = "note.markdown";
const DRAG_THRESHOLD = 4; // px a press must move before it is a drag
const SNAP_PX = 18; // a connection dropped this close to a port connects to it
const ZOOM_MIN = 0.1;
const ZOOM_MAX = 4;
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const ACTION_FALLBACK_MS = 20000;

let editorCount = 0;

// ---- small helpers ------------------------------------------------------------------

function h(tag, attrs, children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function s(tag, attrs, children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  if (!attrs) return;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  if (children === undefined || children === null) return;
  for (const child of Array.isArray(children) ? children : [children]) {
    if (child === undefined || child === null || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

function clone(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

/** Deep equality of JSON values, whatever the order of object keys. */
function same(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((v, i) => same(v, b[i]));
  const ka = Object.keys(a).filter((k) => a[k] !== undefined);
  const kb = Object.keys(b).filter((k) => b[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && same(a[k], b[k]));
}

/** A params/inputs/outputs spec (an ordered object, or a list of {name, ...}) as pairs. */
function specEntries(spec) {
  if (Array.isArray(spec)) {
    return spec
      .filter((item) => item && (item.name || item.id))
      .map((item) => [String(item.name || item.id), item]);
  }
  if (spec && typeof spec === "object") {
    return Object.entries(spec).map(([name, item]) => [name, item || {}]);
  }
  return [];
}

function truncate(text, max) {
  text = String(text);
  return text.length > max ? `${text.slice(0, Math.max(1, max - 1))}…` : text;
}

function messagesOf(value) {
  if (value === undefined || value === null) return [];
  return (Array.isArray(value) ? value : [value]).map(String).filter((m) => m.length);
}

function edgeKey(edge) {
  return [edge.source, edge.source_port, edge.target, edge.target_port].join("\u0000");
}

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function isFormField(target) {
  if (!target || !target.closest) return false;
  return !!target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']");
}

function kindOf(node) {
  if (node.template === CODE_TEMPLATE) return "code";
  if (node.template === NOTE_TEMPLATE) return "note";
  return "template";
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// ---- the editor -----------------------------------------------------------------------

class Editor {
  constructor(model, host) {
    this.model = model;
    this.host = host;
    this.id = ++editorCount;
    this.graph = { nodes: [], edges: [], inputs: [] };
    this.templates = new Map();
    this.view = { x: 40, y: 40, k: 1 };
    this.viewTouched = false; // the user zoomed or panned: never fit on their behalf
    this.fitted = false; // fitted once the graph had nodes and the canvas a size
    this.sel = null; // {kind: "node", id} | {kind: "edge", key}
    this.nodeRecs = new Map();
    this.edgeRecs = new Map();
    this.drag = null;
    this.pendingGraph = false;
    this.collapsed = new Set();
    this.suppress = 0;
    this.panelScroll = 0;
    this.commits = 0; // graph updates sent
    this.acked = 0; // ... the kernel has gone idle after
    this.actionQueue = [];
    this.actionTimer = null;
    this.cleanups = [];
    this.build();
  }

  // -- model plumbing -------------------------------------------------------------------

  readGraph() {
    const raw = this.model.get("graph");
    const graph = isPlainObject(raw) ? clone(raw) : {};
    for (const key of ["nodes", "edges", "inputs"]) {
      if (!Array.isArray(graph[key])) graph[key] = [];
    }
    graph.nodes = graph.nodes.filter((n) => isPlainObject(n) && typeof n.id === "string");
    graph.edges = graph.edges.filter((e) => isPlainObject(e));
    graph.inputs = graph.inputs.filter((i) => isPlainObject(i));
    graph.nodes.forEach((node, i) => {
      if (!isPlainObject(node.params)) node.params = {};
      if (!isPlainObject(node.bind)) node.bind = {};
      if (!finite(node.x) || !finite(node.y)) {
        node.x = (i % 5) * 230;
        node.y = Math.floor(i / 5) * 150;
      }
    });
    this.graph = graph;
  }

  readTemplates() {
    this.templates = new Map();
    const palette = this.model.get("palette");
    for (const tpl of Array.isArray(palette) ? palette : []) {
      if (isPlainObject(tpl) && typeof tpl.id === "string") this.templates.set(tpl.id, tpl);
    }
  }

  /** Send the local graph to Python: once per gesture, never per mouse move. */
  commit() {
    const next = clone(this.graph);
    if (same(next, this.model.get("graph"))) return;
    const token = ++this.commits;
    this.suppress++;
    try {
      this.model.set("graph", next);
      this.model.save_changes({
        iopub: {
          status: (msg) => {
            if (msg && msg.content && msg.content.execution_state === "idle") {
              this.acked = Math.max(this.acked, token);
              this.flushActions();
            }
          },
        },
      });
    } finally {
      this.suppress--;
    }
  }

  /** A custom message, sent after the graph updates before it reached the kernel (a
   * state update can wait in ipywidgets' buffer; a custom message does not). */
  action(content) {
    this.actionQueue.push(content);
    this.flushActions();
    if (this.actionQueue.length && !this.actionTimer) {
      this.actionTimer = setTimeout(() => {
        this.actionTimer = null;
        this.acked = this.commits;
        this.flushActions();
      }, ACTION_FALLBACK_MS);
    }
  }

  flushActions() {
    if (this.acked < this.commits) return;
    if (this.actionTimer) {
      clearTimeout(this.actionTimer);
      this.actionTimer = null;
    }
    const queue = this.actionQueue;
    this.actionQueue = [];
    for (const content of queue) this.model.send(content);
  }

  hint(text) {
    this.hintEl.textContent = text || "";
  }

  // -- DOM --------------------------------------------------------------------------------

  build() {
    const patternId = `cnb-grid-${this.id}`;
    this.root = h("div", {
      class: "cnb-editor",
      tabindex: "0",
      "data-lm-suppress-shortcuts": "true",
    });
    // toolbar
    this.saveBtn = h("button", { class: "cnb-btn cnb-save", type: "button", title: "Save the notebook (Ctrl+S)", text: "Save" });
    this.runBtn = h("button", { class: "cnb-btn cnb-run", type: "button", title: "Run the workflow", text: "▶ Run" });
    this.layoutBtn = h("button", { class: "cnb-btn cnb-layout", type: "button", title: "Lay the nodes out", text: "Auto-layout" });
    this.fitBtn = h("button", { class: "cnb-btn cnb-fit", type: "button", title: "Fit the graph in view (F)", text: "Fit" });
    this.zoomLabel = h("span", { class: "cnb-zoom", title: "zoom" });
    this.messageEl = h("span", { class: "cnb-message" });
    this.hintEl = h("span", { class: "cnb-hint" });
    this.pathEl = h("span", { class: "cnb-path" });
    const toolbar = h("div", { class: "cnb-toolbar" }, [
      this.saveBtn,
      this.runBtn,
      this.layoutBtn,
      this.fitBtn,
      this.zoomLabel,
      h("span", { class: "cnb-status-line" }, [this.messageEl, this.hintEl]),
      this.pathEl,
    ]);
    this.problemsBar = h("div", { class: "cnb-graph-problems" });
    // palette
    this.filterEl = h("input", { class: "cnb-filter", type: "search", placeholder: "Filter templates…" });
    this.paletteList = h("div", { class: "cnb-palette-list" });
    this.paletteEl = h("div", { class: "cnb-palette" }, [this.filterEl, this.paletteList]);
    // canvas
    this.svg = s("svg", { class: "cnb-canvas", "data-zoom": "1" });
    const defs = s("defs", null, [
      s("pattern", { id: patternId, width: 24, height: 24, patternUnits: "userSpaceOnUse" }, [
        s("circle", { cx: 1, cy: 1, r: 1, class: "cnb-grid-dot" }),
      ]),
    ]);
    this.pattern = defs.firstChild;
    this.background = s("rect", { class: "cnb-background", width: "100%", height: "100%", fill: `url(#${patternId})` });
    this.viewport = s("g", { class: "cnb-viewport" });
    this.edgesLayer = s("g", { class: "cnb-edges" });
    this.nodesLayer = s("g", { class: "cnb-nodes" });
    this.draft = s("path", { class: "cnb-draft", d: "" });
    this.viewport.append(this.edgesLayer, this.nodesLayer, this.draft);
    this.svg.append(defs, this.background, this.viewport);
    this.emptyHint = h("div", { class: "cnb-empty", text: "Drag a template here (or double-click it) to add a node." });
    this.canvasWrap = h("div", { class: "cnb-canvas-wrap" }, [this.svg, this.emptyHint]);
    // panel
    this.panel = h("div", { class: "cnb-panel" });
    this.root.append(
      toolbar,
      this.problemsBar,
      h("div", { class: "cnb-body" }, [this.paletteEl, this.canvasWrap, this.panel]),
    );
    this.host.append(this.root);

    this.readTemplates();
    this.readGraph();
    this.buildPalette();
    this.rebuild();
    this.renderPanel();
    this.renderMessage();
    this.renderProblemsBar();
    this.applyView();
    this.wire();
  }

  wire() {
    const on = (target, type, fn, opts) => {
      target.addEventListener(type, fn, opts);
      this.cleanups.push(() => target.removeEventListener(type, fn, opts));
    };
    const model = this.model;
    model.on("change:graph", () => this.onGraphChanged());
    model.on("change:palette", () => {
      this.readTemplates();
      this.buildPalette();
      if (this.drag) this.pendingGraph = true;
      else {
        this.rebuild();
        this.renderPanel();
      }
    });
    model.on("change:problems", () => {
      this.applyStates();
      this.renderProblemsBar();
      this.renderPanelState();
    });
    model.on("change:status", () => {
      this.applyStates();
      this.renderPanelState();
    });
    model.on("change:message", () => this.renderMessage());
    model.on("change:path", () => this.renderMessage());
    model.on("msg:custom", (msg) => this.onCustom(msg));

    on(this.saveBtn, "click", () => this.action({ action: "save" }));
    on(this.runBtn, "click", () => this.action({ action: "run" }));
    on(this.layoutBtn, "click", () => this.action({ action: "layout" }));
    on(this.fitBtn, "click", () => this.fit());

    on(this.filterEl, "input", () => this.applyFilter());
    on(this.paletteList, "mousedown", (e) => this.onPaletteDown(e));
    on(this.paletteList, "dblclick", (e) => this.onPaletteDblClick(e));
    on(this.paletteList, "click", (e) => {
      const head = e.target.closest(".cnb-palette-group-head");
      if (head) this.toggleGroup(head.parentElement);
    });

    on(this.panel, "scroll", () => {
      this.panelScroll = this.panel.scrollTop;
    }, { passive: true });
    on(this.svg, "mousedown", (e) => this.onCanvasDown(e));
    on(this.svg, "wheel", (e) => this.onWheel(e), { passive: false });
    on(this.root, "keydown", (e) => this.onKey(e));

    this.onMove = (e) => this.onDragMove(e);
    this.onUp = (e) => this.onDragUp(e);
    this.cleanups.push(() => this.endDrag());

    if (typeof ResizeObserver !== "undefined") {
      const observer = new ResizeObserver(() => {
        // fit once the canvas has a size (fit() does nothing while it has none)
        if (!this.fitted && !this.viewTouched && this.graph.nodes.length) this.fit(true);
      });
      observer.observe(this.canvasWrap);
      this.cleanups.push(() => observer.disconnect());
    }
  }

  destroy() {
    for (const fn of this.cleanups.splice(0)) {
      try {
        fn();
      } catch (err) {
        console.error(err);
      }
    }
    if (this.actionTimer) clearTimeout(this.actionTimer);
    this.root.remove();
  }

  onCustom(msg) {
    if (!isPlainObject(msg)) return;
    if (msg.action === "fit") this.fit();
    else if (msg.action === "select") {
      const id = typeof msg.node === "string" ? msg.node : null;
      this.select(id && this.nodeRecs.has(id) ? { kind: "node", id } : null);
    }
  }

  onGraphChanged() {
    if (this.suppress) return;
    if (this.drag) {
      this.pendingGraph = true;
      return;
    }
    this.readGraph();
    this.rebuild();
    if (this.sel && this.sel.kind === "node" && !this.nodeRecs.has(this.sel.id)) this.sel = null;
    if (this.sel && this.sel.kind === "edge" && !this.edgeRecs.has(this.sel.key)) this.sel = null;
    this.applySelection();
    this.renderPanel();
    if (!this.fitted && !this.viewTouched && this.graph.nodes.length) this.fit(true);
  }

  renderMessage() {
    const message = this.model.get("message");
    this.messageEl.textContent = message ? String(message) : "";
    this.messageEl.title = this.messageEl.textContent;
    const path = this.model.get("path");
    this.pathEl.textContent = path ? String(path) : "";
    this.pathEl.title = this.pathEl.textContent;
  }

  renderProblemsBar() {
    const problems = this.model.get("problems") || {};
    const items = [];
    for (const msg of messagesOf(problems[""])) items.push(msg);
    for (const [key, value] of Object.entries(problems)) {
      if (key === "" || this.nodeRecs.has(key)) continue;
      for (const msg of messagesOf(value)) items.push(`${key}: ${msg}`);
    }
    this.problemsBar.textContent = "";
    this.problemsBar.classList.toggle("cnb-has-problems", items.length > 0);
    if (items.length) this.problemsBar.append(h("ul", null, items.map((m) => h("li", { text: m }))));
  }

  // -- palette ----------------------------------------------------------------------------

  buildPalette() {
    this.paletteList.textContent = "";
    const groups = new Map();
    for (const tpl of this.templates.values()) {
      const cat = tpl.category ? String(tpl.category) : "other";
      if (!groups.has(cat)) groups.set(cat, []);
      groups.get(cat).push(tpl);
    }
    const cats = [...groups.keys()].sort((a, b) => a.localeCompare(b));
    for (const cat of cats) {
      const items = groups.get(cat).map((tpl) => {
        const broken = tpl.broken ? String(tpl.broken) : null;
        const name = tpl.name ? String(tpl.name) : tpl.id;
        return h(
          "div",
          {
            class: `cnb-palette-item${broken ? " cnb-broken" : ""}`,
            "data-template": tpl.id,
            title: broken ? `${tpl.id} is broken: ${broken}` : `${tpl.id}${tpl.description ? ` — ${tpl.description}` : ""}`,
            "aria-disabled": broken ? "true" : null,
            draggable: "false",
          },
          [
            h("span", { class: "cnb-palette-name", text: name }),
            broken ? h("span", { class: "cnb-broken-reason", text: broken }) : null,
          ],
        );
      });
      const group = h("div", { class: "cnb-palette-group", "data-category": cat }, [
        h("div", { class: "cnb-palette-group-head", role: "button", title: "Show/hide" }, [
          h("span", { class: "cnb-caret" }),
          h("span", { class: "cnb-palette-cat", text: cat }),
          h("span", { class: "cnb-count", text: String(items.length) }),
        ]),
        h("div", { class: "cnb-palette-items" }, items),
      ]);
      if (this.collapsed.has(cat)) group.classList.add("cnb-collapsed");
      this.paletteList.append(group);
    }
    if (!cats.length) this.paletteList.append(h("div", { class: "cnb-muted", text: "No templates." }));
    this.applyFilter();
  }

  toggleGroup(group) {
    const cat = group.dataset.category;
    const collapsed = group.classList.toggle("cnb-collapsed");
    if (collapsed) this.collapsed.add(cat);
    else this.collapsed.delete(cat);
  }

  applyFilter() {
    const q = this.filterEl.value.trim().toLowerCase();
    this.paletteList.classList.toggle("cnb-filtering", q.length > 0);
    for (const group of this.paletteList.querySelectorAll(".cnb-palette-group")) {
      let shown = 0;
      for (const item of group.querySelectorAll(".cnb-palette-item")) {
        const tpl = this.templates.get(item.dataset.template) || {};
        const hay = [tpl.id, tpl.name, tpl.category, tpl.description].join(" ").toLowerCase();
        const ok = !q || hay.includes(q);
        item.hidden = !ok;
        if (ok) shown++;
      }
      group.hidden = shown === 0;
    }
  }

  paletteItem(e) {
    const item = e.target.closest(".cnb-palette-item");
    if (!item || item.classList.contains("cnb-broken")) return null;
    const tpl = this.templates.get(item.dataset.template);
    return tpl && !tpl.broken ? tpl : null;
  }

  onPaletteDown(e) {
    if (e.button !== 0) return;
    const tpl = this.paletteItem(e);
    if (!tpl) return;
    e.preventDefault(); // no text selection, no native drag
    this.focus();
    this.hint("");
    this.startDrag({ type: "palette", tpl, x0: e.clientX, y0: e.clientY, moved: false, ghost: null });
  }

  onPaletteDblClick(e) {
    const tpl = this.paletteItem(e);
    if (!tpl) return;
    const rect = this.svg.getBoundingClientRect();
    const center = this.toWorld(rect.left + rect.width / 2, rect.top + rect.height / 2);
    const size = this.measure({ id: this.newId(tpl), template: tpl.id }, tpl);
    const spot = this.freeSpot(center.x - size.w / 2, center.y - size.h / 2, size.w, size.h);
    this.addNode(tpl, spot.x, spot.y);
  }

  /** (x, y), or the nearest place around it where a w x h box overlaps no node. */
  freeSpot(x, y, w, h) {
    const gap = 24;
    const free = (px, py) => {
      for (const rec of this.nodeRecs.values()) {
        const n = rec.node;
        if (px < n.x + rec.w + gap && px + w + gap > n.x && py < n.y + rec.h + gap && py + h + gap > n.y) return false;
      }
      return true;
    };
    const dx = w + gap;
    const dy = h + gap;
    for (let ring = 0; ring <= 6; ring++) {
      const spots = [];
      for (let i = -ring; i <= ring; i++) {
        for (let j = -ring; j <= ring; j++) {
          if (Math.max(Math.abs(i), Math.abs(j)) === ring) spots.push([i, j]);
        }
      }
      spots.sort((a, b) => Math.hypot(a[0] * dx, a[1] * dy) - Math.hypot(b[0] * dx, b[1] * dy));
      for (const [i, j] of spots) {
        if (free(x + i * dx, y + j * dy)) return { x: x + i * dx, y: y + j * dy };
      }
    }
    return { x: x + gap, y: y + gap };
  }

  // -- graph edits --------------------------------------------------------------------------

  newId(tpl) {
    let base = String(tpl.id).split(".").pop().replace(/[^A-Za-z0-9_]/g, "_");
    if (!base || !IDENT.test(base)) base = `n_${base}`;
    const taken = new Set(this.graph.nodes.map((n) => n.id));
    let n = 1;
    while (taken.has(`${base}_${n}`)) n++;
    return `${base}_${n}`;
  }

  addNode(tpl, x, y) {
    const params = {};
    for (const [name, spec] of specEntries(tpl.params)) {
      if (spec && spec.default !== undefined && spec.default !== null) params[name] = clone(spec.default);
    }
    const node = {
      id: this.newId(tpl),
      template: tpl.id,
      params,
      bind: {},
      x: Math.round(x),
      y: Math.round(y),
    };
    if (tpl.id === CODE_TEMPLATE || tpl.id === NOTE_TEMPLATE) node.code = "";
    this.graph.nodes.push(node);
    const rec = this.buildNode(node);
    this.nodesLayer.append(rec.g);
    this.applyStates();
    this.updateEmptyHint();
    this.select({ kind: "node", id: node.id });
    this.commit();
    return node;
  }

  deleteSelection() {
    const sel = this.sel;
    if (!sel) return false;
    if (sel.kind === "node") {
      const rec = this.nodeRecs.get(sel.id);
      if (!rec) return false;
      this.graph.nodes = this.graph.nodes.filter((n) => n !== rec.node);
      this.graph.edges = this.graph.edges.filter((e) => e.source !== sel.id && e.target !== sel.id);
      for (const erec of [...rec.edges]) this.dropEdgeRec(erec);
      rec.g.remove();
      this.nodeRecs.delete(sel.id);
    } else {
      const erec = this.edgeRecs.get(sel.key);
      if (!erec) return false;
      this.graph.edges = this.graph.edges.filter((e) => e !== erec.edge);
      this.dropEdgeRec(erec);
    }
    this.sel = null;
    this.updateEmptyHint();
    this.renderPanel();
    this.commit();
    return true;
  }

  dropEdgeRec(erec) {
    erec.g.remove();
    this.edgeRecs.delete(erec.key);
    if (erec.src) erec.src.edges.delete(erec);
    if (erec.dst) erec.dst.edges.delete(erec);
  }

  /** Why an edge from (a) to (b) is refused, or null; a and b are {node, port, dir}. */
  refuse(src, dst) {
    if (src.node === dst.node) return "a node cannot connect to itself";
    const edge = { source: src.node, source_port: src.port, target: dst.node, target_port: dst.port };
    if (this.edgeRecs.has(edgeKey(edge))) return "these ports are already connected";
    const dstRec = this.nodeRecs.get(dst.node);
    const inPort = dstRec && dstRec.ins.find((p) => p.name === dst.port);
    const taken = this.graph.edges.some((e) => e.target === dst.node && e.target_port === dst.port);
    if (taken && !(inPort && inPort.multiple)) return `input ${dst.port} of ${dst.node} takes one edge`;
    // a cycle: is src reachable from dst already?
    const out = new Map();
    for (const e of this.graph.edges) {
      if (!out.has(e.source)) out.set(e.source, []);
      out.get(e.source).push(e.target);
    }
    const seen = new Set([dst.node]);
    const stack = [dst.node];
    while (stack.length) {
      const id = stack.pop();
      if (id === src.node) return "that edge would make a cycle";
      for (const next of out.get(id) || []) {
        if (!seen.has(next)) {
          seen.add(next);
          stack.push(next);
        }
      }
    }
    return null;
  }

  connect(a, b) {
    if (a.dir === b.dir) return;
    const [src, dst] = a.dir === "out" ? [a, b] : [b, a];
    const why = this.refuse(src, dst);
    if (why) {
      this.hint(`Not connected: ${why}.`);
      return;
    }
    const edge = { source: src.node, source_port: src.port, target: dst.node, target_port: dst.port };
    this.graph.edges.push(edge);
    const erec = this.buildEdge(edge);
    if (erec) this.edgesLayer.append(erec.g);
    this.commit();
  }

  // -- canvas: building -------------------------------------------------------------------

  portsUsed() {
    const used = new Map();
    const get = (id) => {
      if (!used.has(id)) used.set(id, { in: [], out: [] });
      return used.get(id);
    };
    for (const e of this.graph.edges) {
      if (typeof e.source === "string" && e.source_port !== undefined) get(e.source).out.push(String(e.source_port));
      if (typeof e.target === "string" && e.target_port !== undefined) get(e.target).in.push(String(e.target_port));
    }
    return used;
  }

  measure(node, tpl, used) {
    const ins = specEntries(tpl && tpl.inputs).map(([name, spec]) => ({
      name,
      multiple: !!spec.multiple,
      optional: !!spec.optional,
      help: spec.help ? String(spec.help) : "",
    }));
    const outs = specEntries(tpl && tpl.outputs).map(([name, spec]) => ({
      name,
      gate: !!spec.gate,
      help: spec.help ? String(spec.help) : "",
    }));
    if (used) {
      for (const name of used.in) {
        if (!ins.some((p) => p.name === name)) ins.push({ name, extra: true, help: "" });
      }
      for (const name of used.out) {
        if (!outs.some((p) => p.name === name)) outs.push({ name, extra: true, help: "" });
      }
    }
    const title = this.nodeTitle(node, tpl);
    const longestIn = Math.max(0, ...ins.map((p) => p.name.length));
    const longestOut = Math.max(0, ...outs.map((p) => p.name.length));
    const w = Math.min(
      MAX_W,
      Math.max(MIN_W, node.id.length * 7.6 + 56, title.length * 6.4 + 28, (longestIn + longestOut) * 6.4 + 48),
    );
    const rows = Math.max(ins.length, outs.length);
    const h = HEADER_H + (rows ? PORT_TOP + rows * PORT_H + 6 : 4);
    return { w: Math.round(w), h, ins, outs };
  }

  nodeTitle(node, tpl) {
    if (node.label) return String(node.label);
    if (kindOf(node) === "note") {
      const first = String(node.code || "").split("\n").find((l) => l.trim()) || "";
      return first.replace(/^#+\s*/, "") || "Note";
    }
    if (tpl && tpl.name) return String(tpl.name);
    return String(node.template || "");
  }

  buildNode(node, used) {
    const tpl = this.templates.get(node.template);
    if (!used) used = this.portsUsed().get(node.id);
    const size = this.measure(node, tpl, used || { in: [], out: [] });
    const { w, h: height, ins, outs } = size;
    const kind = kindOf(node);
    const g = s("g", {
      class: `cnb-node cnb-kind-${kind}${tpl ? "" : " cnb-unknown"}`,
      "data-node": node.id,
      "data-template": node.template || "",
      transform: `translate(${node.x},${node.y})`,
    });
    const maxChars = Math.floor((w - 20) / 6.6);
    g.append(
      s("rect", { class: "cnb-node-sel", x: -4, y: -4, width: w + 8, height: height + 8, rx: 9 }),
      s("rect", { class: "cnb-node-box", width: w, height, rx: 6 }),
      s("rect", { class: "cnb-node-head", width: w, height: 5, rx: 2 }),
      s("text", { class: "cnb-node-id", x: 10, y: 20, text: truncate(node.id, Math.floor((w - 60) / 7.6)) }, [
        s("title", { text: node.id }),
      ]),
      s("text", {
        class: "cnb-node-name",
        x: 10,
        y: 35,
        text: truncate(this.nodeTitle(node, tpl), maxChars),
      }, [s("title", { text: `${node.template}${tpl ? "" : " (unknown template)"}` })]),
    );
    const stateText = s("text", { class: "cnb-node-state", x: w - 8, y: 35, "text-anchor": "end" });
    g.append(stateText);
    if (node.edited) {
      g.append(
        s("text", { class: "cnb-edited-mark", x: w - 8, y: 20, "text-anchor": "end", text: "✎ edited" }, [
          s("title", { text: "edited by hand: saving keeps its source" }),
        ]),
      );
    }
    const rec = { node, tpl, g, w, h: height, ins, outs, edges: new Set(), stateText, badge: null };
    const portY = (i) => HEADER_H + PORT_TOP + i * PORT_H + PORT_H / 2;
    const labelChars = Math.floor((w / 2 - 16) / 6.4);
    ins.forEach((port, i) => {
      const y = portY(i);
      g.append(s("text", { class: "cnb-port-label", x: 12, y: y + 4, text: truncate(port.name, labelChars) }));
      g.append(this.portEl(node.id, port, "in", 0, y));
    });
    outs.forEach((port, i) => {
      const y = portY(i);
      g.append(
        s("text", {
          class: "cnb-port-label",
          x: w - 12,
          y: y + 4,
          "text-anchor": "end",
          text: truncate(port.name, labelChars),
        }),
      );
      g.append(this.portEl(node.id, port, "out", w, y));
    });
    this.nodeRecs.set(node.id, rec);
    return rec;
  }

  portEl(nodeId, port, dir, x, y) {
    const cls = ["cnb-port", `cnb-port-${dir}`];
    if (port.gate) cls.push("cnb-gate");
    if (port.multiple && !port.extra) cls.push("cnb-multiple");
    if (port.optional) cls.push("cnb-optional");
    if (port.extra) cls.push("cnb-port-extra");
    const tip = [`${dir === "in" ? "input" : "output"} ${port.name}`];
    if (port.help) tip.push(port.help);
    if (port.gate) tip.push("gate: downstream nodes run only when it is true");
    if (port.multiple && dir === "in") tip.push("takes several edges");
    if (port.optional) tip.push("optional");
    return s(
      "g",
      { class: cls.join(" "), "data-node": nodeId, "data-port": port.name, "data-dir": dir, transform: `translate(${x},${y})` },
      [s("circle", { class: "cnb-port-hit", r: 9 }), s("circle", { class: "cnb-port-dot", r: 4.5 }), s("title", { text: tip.join("\n") })],
    );
  }

  portPos(rec, dir, name) {
    const list = dir === "in" ? rec.ins : rec.outs;
    let i = list.findIndex((p) => p.name === name);
    if (i < 0) i = 0;
    return {
      x: rec.node.x + (dir === "out" ? rec.w : 0),
      y: rec.node.y + HEADER_H + PORT_TOP + i * PORT_H + PORT_H / 2,
    };
  }

  buildEdge(edge) {
    const src = this.nodeRecs.get(edge.source);
    const dst = this.nodeRecs.get(edge.target);
    if (!src || !dst) return null;
    const key = edgeKey(edge);
    if (this.edgeRecs.has(key)) return null;
    const srcPort = src.outs.find((p) => p.name === String(edge.source_port));
    const hit = s("path", { class: "cnb-edge-hit" });
    const line = s("path", { class: "cnb-edge-line" });
    const g = s(
      "g",
      {
        class: `cnb-edge${srcPort && srcPort.gate ? " cnb-edge-gate" : ""}`,
        "data-source": edge.source,
        "data-source-port": edge.source_port,
        "data-target": edge.target,
        "data-target-port": edge.target_port,
      },
      [hit, line, s("title", { text: `${edge.source}.${edge.source_port} → ${edge.target}.${edge.target_port}` })],
    );
    const erec = { edge, key, g, hit, line, src, dst };
    src.edges.add(erec);
    dst.edges.add(erec);
    this.edgeRecs.set(key, erec);
    this.updateEdge(erec);
    return erec;
  }

  updateEdge(erec) {
    const a = this.portPos(erec.src, "out", String(erec.edge.source_port));
    const b = this.portPos(erec.dst, "in", String(erec.edge.target_port));
    const d = curve(a.x, a.y, b.x, b.y);
    erec.hit.setAttribute("d", d);
    erec.line.setAttribute("d", d);
  }

  /** (Re)build the whole drawing from the local graph: on load and when Python replaces it. */
  rebuild() {
    const t0 = performance.now();
    this.nodesLayer.textContent = "";
    this.edgesLayer.textContent = "";
    this.nodeRecs = new Map();
    this.edgeRecs = new Map();
    const used = this.portsUsed();
    const nodes = document.createDocumentFragment();
    for (const node of this.graph.nodes) {
      if (this.nodeRecs.has(node.id)) continue; // a duplicate id: Python reports it
      nodes.append(this.buildNode(node, used.get(node.id)).g);
    }
    const edges = document.createDocumentFragment();
    for (const edge of this.graph.edges) {
      const erec = this.buildEdge(edge);
      if (erec) edges.append(erec.g);
    }
    this.nodesLayer.append(nodes);
    this.edgesLayer.append(edges);
    this.applyStates();
    this.applySelection();
    this.updateEmptyHint();
    this.renderProblemsBar();
    const ms = performance.now() - t0;
    this.root.dataset.renderMs = ms.toFixed(1);
    this.root.dataset.nodes = String(this.nodeRecs.size);
    const root = this.root;
    requestAnimationFrame(() => {
      root.dataset.paintMs = (performance.now() - t0).toFixed(1);
    });
  }

  updateEmptyHint() {
    this.emptyHint.hidden = this.graph.nodes.length > 0;
  }

  // -- states, selection --------------------------------------------------------------------

  applyStates() {
    const problems = this.model.get("problems") || {};
    const status = this.model.get("status") || {};
    for (const [id, rec] of this.nodeRecs) {
      const msgs = messagesOf(problems[id]);
      const state = typeof status[id] === "string" ? status[id] : "";
      const g = rec.g;
      g.classList.toggle("cnb-problem", msgs.length > 0);
      for (const st of STATES) g.classList.toggle(`cnb-status-${st}`, state === st);
      g.classList.toggle("cnb-edited", !!rec.node.edited);
      rec.stateText.textContent = state;
      if (msgs.length) {
        if (!rec.badge) {
          rec.badge = s("g", { class: "cnb-badge", transform: `translate(${rec.w},0)` }, [
            s("circle", { r: 9 }),
            s("text", { y: 4, "text-anchor": "middle", text: "!" }),
            s("title"),
          ]);
          g.append(rec.badge);
        }
        rec.badge.lastChild.textContent = msgs.join("\n");
      } else if (rec.badge) {
        rec.badge.remove();
        rec.badge = null;
      }
    }
  }

  select(sel) {
    this.sel = sel;
    this.applySelection();
    this.renderPanel();
  }

  applySelection() {
    for (const node of this.svg.querySelectorAll(".cnb-selected")) node.classList.remove("cnb-selected");
    if (!this.sel) return;
    const rec = this.sel.kind === "node" ? this.nodeRecs.get(this.sel.id) : this.edgeRecs.get(this.sel.key);
    if (rec) {
      rec.g.classList.add("cnb-selected");
      if (this.sel.kind === "node") this.nodesLayer.append(rec.g); // on top
    }
  }

  // -- view ----------------------------------------------------------------------------------

  applyView() {
    const { x, y, k } = this.view;
    this.viewport.setAttribute("transform", `translate(${x},${y}) scale(${k})`);
    this.pattern.setAttribute("patternTransform", `translate(${x},${y}) scale(${k})`);
    this.svg.dataset.zoom = String(Math.round(k * 1000) / 1000);
    this.zoomLabel.textContent = `${Math.round(k * 100)}%`;
  }

  toWorld(clientX, clientY) {
    const rect = this.svg.getBoundingClientRect();
    return {
      x: (clientX - rect.left - this.view.x) / this.view.k,
      y: (clientY - rect.top - this.view.y) / this.view.k,
    };
  }

  fit(auto) {
    const rect = this.svg.getBoundingClientRect();
    if (!rect.width || !rect.height) return;
    if (!this.nodeRecs.size) {
      this.view = { x: 40, y: 40, k: 1 };
      this.applyView();
      return;
    }
    let x0 = Infinity;
    let y0 = Infinity;
    let x1 = -Infinity;
    let y1 = -Infinity;
    for (const rec of this.nodeRecs.values()) {
      x0 = Math.min(x0, rec.node.x);
      y0 = Math.min(y0, rec.node.y);
      x1 = Math.max(x1, rec.node.x + rec.w);
      y1 = Math.max(y1, rec.node.y + rec.h);
    }
    const pad = 30;
    const k = Math.max(
      ZOOM_MIN,
      Math.min(1.25, (rect.width - 2 * pad) / Math.max(1, x1 - x0), (rect.height - 2 * pad) / Math.max(1, y1 - y0)),
    );
    this.view = {
      k,
      x: (rect.width - (x1 - x0) * k) / 2 - x0 * k,
      y: (rect.height - (y1 - y0) * k) / 2 - y0 * k,
    };
    if (!auto) this.viewTouched = true;
    this.fitted = true;
    this.applyView();
  }

  zoomAt(clientX, clientY, factor) {
    const rect = this.svg.getBoundingClientRect();
    const sx = clientX - rect.left;
    const sy = clientY - rect.top;
    const k = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, this.view.k * factor));
    const wx = (sx - this.view.x) / this.view.k;
    const wy = (sy - this.view.y) / this.view.k;
    this.view = { k, x: sx - wx * k, y: sy - wy * k };
    this.viewTouched = true;
    this.applyView();
  }

  onWheel(e) {
    e.preventDefault();
    e.stopPropagation();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    const delta = Math.max(-400, Math.min(400, e.deltaY * unit));
    this.zoomAt(e.clientX, e.clientY, Math.exp(-delta * 0.0015));
  }

  focus() {
    if (document.activeElement !== this.root) {
      try {
        this.root.focus({ preventScroll: true });
      } catch (err) {
        this.root.focus();
      }
    }
  }

  onKey(e) {
    if (isFormField(e.target)) return;
    if (e.key === "Delete" || e.key === "Backspace") {
      if (this.deleteSelection()) {
        e.preventDefault();
        e.stopPropagation();
      }
    } else if (e.key === "Escape") {
      if (this.drag) this.cancelDrag();
      else this.select(null);
      e.preventDefault();
      e.stopPropagation();
    } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") {
      e.preventDefault();
      e.stopPropagation();
      this.action({ action: "save" });
    } else if ((e.key === "f" || e.key === "F") && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      e.stopPropagation();
      this.fit();
    }
  }

  // -- canvas: gestures --------------------------------------------------------------------

  onCanvasDown(e) {
    if (e.button !== 0) return;
    this.focus();
    this.hint("");
    const target = e.target;
    const port = target.closest(".cnb-port");
    if (port) {
      e.preventDefault();
      const from = { node: port.dataset.node, port: port.dataset.port, dir: port.dataset.dir };
      const rec = this.nodeRecs.get(from.node);
      if (!rec) return;
      this.svg.classList.add(from.dir === "out" ? "cnb-connecting-out" : "cnb-connecting-in");
      this.startDrag({ type: "connect", from, rec, x0: e.clientX, y0: e.clientY, moved: false });
      this.updateDraft(e.clientX, e.clientY);
      return;
    }
    const nodeEl = target.closest(".cnb-node");
    if (nodeEl) {
      e.preventDefault();
      const rec = this.nodeRecs.get(nodeEl.dataset.node);
      if (!rec) return;
      if (!(this.sel && this.sel.kind === "node" && this.sel.id === rec.node.id)) {
        this.select({ kind: "node", id: rec.node.id });
      }
      this.startDrag({
        type: "node",
        rec,
        x0: e.clientX,
        y0: e.clientY,
        nx: rec.node.x,
        ny: rec.node.y,
        moved: false,
      });
      return;
    }
    const edgeEl = target.closest(".cnb-edge");
    if (edgeEl) {
      e.preventDefault();
      const erec = [...this.edgeRecs.values()].find((r) => r.g === edgeEl);
      if (erec) this.select({ kind: "edge", key: erec.key });
      return;
    }
    e.preventDefault();
    this.startDrag({ type: "pan", x0: e.clientX, y0: e.clientY, vx: this.view.x, vy: this.view.y, moved: false });
  }

  startDrag(drag) {
    this.drag = drag;
    window.addEventListener("mousemove", this.onMove, true);
    window.addEventListener("mouseup", this.onUp, true);
  }

  endDrag() {
    window.removeEventListener("mousemove", this.onMove, true);
    window.removeEventListener("mouseup", this.onUp, true);
    const drag = this.drag;
    this.drag = null;
    if (drag && drag.ghost) drag.ghost.remove();
    this.draft.setAttribute("d", "");
    this.svg.classList.remove("cnb-connecting-out", "cnb-connecting-in", "cnb-panning");
    this.canvasWrap.classList.remove("cnb-drop-target");
    if (this.pendingGraph) {
      this.pendingGraph = false;
      this.onGraphChanged();
    }
  }

  cancelDrag() {
    const drag = this.drag;
    if (drag && drag.type === "node" && drag.moved) {
      drag.rec.node.x = drag.nx;
      drag.rec.node.y = drag.ny;
      this.moveNode(drag.rec);
    }
    if (drag && drag.type === "pan") {
      this.view.x = drag.vx;
      this.view.y = drag.vy;
      this.applyView();
    }
    this.endDrag();
  }

  onDragMove(e) {
    const drag = this.drag;
    if (!drag) return;
    const dx = e.clientX - drag.x0;
    const dy = e.clientY - drag.y0;
    if (!drag.moved && Math.hypot(dx, dy) < DRAG_THRESHOLD) return;
    drag.moved = true;
    e.preventDefault();
    if (drag.type === "node") {
      drag.rec.node.x = drag.nx + dx / this.view.k;
      drag.rec.node.y = drag.ny + dy / this.view.k;
      this.moveNode(drag.rec);
    } else if (drag.type === "pan") {
      this.svg.classList.add("cnb-panning");
      this.view.x = drag.vx + dx;
      this.view.y = drag.vy + dy;
      this.viewTouched = true;
      this.applyView();
    } else if (drag.type === "connect") {
      this.updateDraft(e.clientX, e.clientY);
    } else if (drag.type === "palette") {
      if (!drag.ghost) {
        drag.ghost = h("div", { class: "cnb-ghost", text: drag.tpl.name || drag.tpl.id });
        document.body.append(drag.ghost);
      }
      drag.ghost.style.left = `${e.clientX + 10}px`;
      drag.ghost.style.top = `${e.clientY + 10}px`;
      this.canvasWrap.classList.toggle("cnb-drop-target", this.overCanvas(e.clientX, e.clientY));
    }
  }

  onDragUp(e) {
    const drag = this.drag;
    if (!drag) return;
    if (drag.type === "node") {
      if (drag.moved) {
        drag.rec.node.x = Math.round(drag.rec.node.x);
        drag.rec.node.y = Math.round(drag.rec.node.y);
        this.moveNode(drag.rec);
        this.endDrag();
        this.commit();
        return;
      }
    } else if (drag.type === "pan") {
      if (!drag.moved) {
        this.endDrag();
        this.select(null);
        return;
      }
    } else if (drag.type === "connect") {
      const to = this.portAt(e.clientX, e.clientY, drag.from);
      this.endDrag();
      if (to) this.connect(drag.from, to);
      return;
    } else if (drag.type === "palette") {
      const over = drag.moved && this.overCanvas(e.clientX, e.clientY);
      this.endDrag();
      if (over) {
        const p = this.toWorld(e.clientX, e.clientY);
        const size = this.measure({ id: this.newId(drag.tpl), template: drag.tpl.id }, drag.tpl);
        this.addNode(drag.tpl, p.x - size.w / 2, p.y - HEADER_H / 2);
      }
      return;
    }
    this.endDrag();
  }

  overCanvas(clientX, clientY) {
    const r = this.svg.getBoundingClientRect();
    return clientX >= r.left && clientX <= r.right && clientY >= r.top && clientY <= r.bottom;
  }

  /** The port of the other direction under (or near) the pointer. */
  portAt(clientX, clientY, from) {
    const want = from.dir === "out" ? "in" : "out";
    const hit = document.elementFromPoint(clientX, clientY);
    const portEl = hit && hit.closest && hit.closest(".cnb-port");
    if (portEl && this.svg.contains(portEl)) {
      if (portEl.dataset.dir !== want) return null;
      return { node: portEl.dataset.node, port: portEl.dataset.port, dir: want };
    }
    const p = this.toWorld(clientX, clientY);
    const limit = SNAP_PX / this.view.k;
    let best = null;
    let bestD = limit;
    for (const rec of this.nodeRecs.values()) {
      if (rec.node.id === from.node) continue;
      const x = rec.node.x + (want === "out" ? rec.w : 0);
      if (Math.abs(p.x - x) > limit) continue;
      for (const port of want === "in" ? rec.ins : rec.outs) {
        const pos = this.portPos(rec, want, port.name);
        const d = Math.hypot(pos.x - p.x, pos.y - p.y);
        if (d < bestD) {
          bestD = d;
          best = { node: rec.node.id, port: port.name, dir: want };
        }
      }
    }
    return best;
  }

  updateDraft(clientX, clientY) {
    const drag = this.drag;
    const a = this.portPos(drag.rec, drag.from.dir, drag.from.port);
    const b = this.toWorld(clientX, clientY);
    this.draft.setAttribute("d", drag.from.dir === "out" ? curve(a.x, a.y, b.x, b.y) : curve(b.x, b.y, a.x, a.y));
  }

  moveNode(rec) {
    rec.g.setAttribute("transform", `translate(${rec.node.x},${rec.node.y})`);
    for (const erec of rec.edges) this.updateEdge(erec);
  }

  // -- side panel ------------------------------------------------------------------------------

  renderPanel() {
    const active = document.activeElement;
    const focusKey = active && this.panel.contains(active) && active.dataset ? active.dataset.focusKey : null;
    const scroll = this.panelScroll; // kept by a scroll listener: reading scrollTop forces layout
    this.panel.textContent = "";
    this.panelState = null;
    const sel = this.sel;
    if (sel && sel.kind === "node" && this.nodeRecs.has(sel.id)) this.renderNodePanel(this.nodeRecs.get(sel.id));
    else if (sel && sel.kind === "edge" && this.edgeRecs.has(sel.key)) this.renderEdgePanel(this.edgeRecs.get(sel.key));
    else this.renderInputsPanel();
    if (scroll > 0) this.panel.scrollTop = scroll;
    if (focusKey) {
      const again = this.panel.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
      if (again) again.focus({ preventScroll: true });
    }
  }

  renderEdgePanel(erec) {
    const e = erec.edge;
    this.panel.append(
      h("div", { class: "cnb-panel-head" }, [h("div", { class: "cnb-panel-title", text: "Edge" })]),
      h("div", { class: "cnb-panel-text", text: `${e.source}.${e.source_port} → ${e.target}.${e.target_port}` }),
      h("div", { class: "cnb-muted", text: "Delete or Backspace removes it." }),
    );
  }

  renderNodePanel(rec) {
    const node = rec.node;
    const tpl = rec.tpl;
    const kind = kindOf(node);
    this.panel.append(
      h("div", { class: "cnb-panel-head", "data-node": node.id }, [
        h("div", { class: "cnb-panel-title", text: node.id }),
        h("div", { class: "cnb-panel-sub", text: tpl ? `${tpl.name || tpl.id} · ${tpl.id}` : `${node.template} (unknown template)` }),
        tpl && tpl.description ? h("div", { class: "cnb-panel-desc", text: String(tpl.description) }) : null,
      ]),
    );
    const stateBox = h("div", { class: "cnb-panel-state" });
    this.panel.append(stateBox);
    this.panelState = { box: stateBox, node: node.id };
    this.renderPanelState();
    if (node.edited && kind === "template") {
      const reset = h("button", {
        class: "cnb-btn cnb-reset",
        type: "button",
        title: "Render the cell from its template again (its hand edits are lost)",
        text: "Reset to template",
      });
      reset.addEventListener("click", () => this.action({ action: "reset", node: node.id }));
      this.panel.append(
        h("div", { class: "cnb-edited-note" }, [
          h("div", { text: "✎ Edited by hand: saving keeps this cell's source; the parameters below do not change it." }),
          reset,
        ]),
      );
    }
    if (kind === "code" || kind === "note") {
      const area = h("textarea", {
        class: `cnb-code${kind === "note" ? " cnb-markdown" : ""}`,
        rows: kind === "note" ? 8 : 12,
        spellcheck: "false",
        "data-focus-key": "code",
        placeholder: kind === "note" ? "Markdown text" : "Python code",
      });
      area.value = typeof node.code === "string" ? node.code : "";
      area.addEventListener("change", () => {
        node.code = area.value;
        if (kind === "note") this.refreshNode(rec);
        this.commit();
      });
      this.panel.append(
        h("div", { class: "cnb-field cnb-field-code", "data-param": "code" }, [
          h("label", { class: "cnb-field-label", text: kind === "note" ? "Note (markdown)" : "Code" }),
          area,
        ]),
      );
    } else if (node.edited && typeof node.code === "string") {
      const area = h("textarea", { class: "cnb-code", rows: 6, readonly: true, spellcheck: "false" });
      area.value = node.code;
      this.panel.append(h("div", { class: "cnb-field cnb-field-source" }, [h("label", { class: "cnb-field-label", text: "Cell source" }), area]));
    }
    const params = specEntries(tpl && tpl.params);
    if (params.length) {
      const form = h("div", { class: "cnb-form" });
      for (const [name, spec] of params) form.append(this.paramField(rec, name, spec));
      this.panel.append(h("div", { class: "cnb-panel-section", text: "Parameters" }), form);
    } else if (kind === "template") {
      this.panel.append(h("div", { class: "cnb-muted", text: "No parameters." }));
    }
  }

  /** The node's status, problems and re-run button (updated without rebuilding the form). */
  renderPanelState() {
    const ps = this.panelState;
    if (!ps || !ps.box.isConnected) return;
    const problems = messagesOf((this.model.get("problems") || {})[ps.node]);
    const state = (this.model.get("status") || {})[ps.node];
    const box = ps.box;
    box.textContent = "";
    if (typeof state === "string" && state) {
      box.append(h("div", { class: `cnb-panel-status cnb-status-${state}`, text: `status: ${state}` }));
    }
    if (state === "failed") {
      const btn = h("button", { class: "cnb-btn cnb-rerun", type: "button", text: "↻ Re-run from here" });
      btn.addEventListener("click", () => this.action({ action: "rerun", node: ps.node }));
      box.append(btn);
    }
    if (problems.length) {
      box.append(h("ul", { class: "cnb-panel-problems" }, problems.map((m) => h("li", { text: m }))));
    }
  }

  refreshNode(rec) {
    // the node's drawing depends on its code (a note's title): redraw that node only
    const selected = rec.g.classList.contains("cnb-selected");
    const old = rec.g;
    const edges = [...rec.edges];
    this.nodeRecs.delete(rec.node.id);
    const fresh = this.buildNode(rec.node);
    old.replaceWith(fresh.g);
    for (const erec of edges) {
      erec.src = erec.src === rec ? fresh : erec.src;
      erec.dst = erec.dst === rec ? fresh : erec.dst;
      fresh.edges.add(erec);
      this.updateEdge(erec);
    }
    if (selected) fresh.g.classList.add("cnb-selected");
    this.applyStates();
  }

  paramField(rec, name, spec) {
    const node = rec.node;
    const type = spec.type ? String(spec.type) : "string";
    const field = h("div", { class: `cnb-field cnb-type-${type}`, "data-param": name, "data-type": type });
    const error = h("div", { class: "cnb-field-error" });
    const setError = (msg) => {
      error.textContent = msg || "";
      field.classList.toggle("cnb-invalid", !!msg);
    };
    const has = Object.prototype.hasOwnProperty.call(node.params, name);
    const value = has ? node.params[name] : undefined;
    const store = (v) => {
      setError("");
      if (v === undefined) delete node.params[name];
      else node.params[name] = v;
      this.commit();
    };
    const key = `param:${name}`;
    let control;
    switch (type) {
      case "text": {
        control = h("textarea", { class: "cnb-control", rows: 4, "data-focus-key": key });
        control.value = value === undefined || value === null ? "" : String(value);
        control.addEventListener("change", () => store(control.value));
        break;
      }
      case "integer":
      case "number": {
        control = h("input", {
          class: "cnb-control",
          type: "number",
          step: type === "integer" ? "1" : "any",
          min: finite(spec.minimum) ? spec.minimum : null,
          max: finite(spec.maximum) ? spec.maximum : null,
          placeholder: spec.default !== undefined && spec.default !== null ? String(spec.default) : "",
          "data-focus-key": key,
        });
        control.value = finite(value) ? String(value) : "";
        control.addEventListener("change", () => {
          const raw = control.value.trim();
          if (raw === "") {
            if (control.validity && control.validity.badInput) return setError("not a number");
            return store(undefined);
          }
          const num = Number(raw);
          if (!Number.isFinite(num)) return setError("not a number");
          if (type === "integer" && !Number.isInteger(num)) return setError("must be a whole number");
          if (finite(spec.minimum) && num < spec.minimum) return setError(`must be ≥ ${spec.minimum}`);
          if (finite(spec.maximum) && num > spec.maximum) return setError(`must be ≤ ${spec.maximum}`);
          store(num);
        });
        break;
      }
      case "boolean": {
        control = h("input", { class: "cnb-control", type: "checkbox", "data-focus-key": key });
        control.checked = value === undefined ? !!spec.default : !!value;
        control.addEventListener("change", () => store(control.checked));
        break;
      }
      case "choice": {
        const choices = Array.isArray(spec.choices) ? spec.choices : [];
        control = h("select", { class: "cnb-control", "data-focus-key": key });
        if (value === undefined || !choices.some((c) => same(c, value))) {
          control.append(h("option", { value: "", text: value === undefined ? "— choose —" : `${JSON.stringify(value)} (not a choice)` }));
        }
        choices.forEach((choice, i) => {
          const opt = h("option", { value: String(i), text: typeof choice === "string" ? choice : JSON.stringify(choice) });
          if (value !== undefined && same(choice, value)) opt.selected = true;
          control.append(opt);
        });
        control.addEventListener("change", () => {
          if (control.value === "") return store(undefined);
          store(clone(choices[Number(control.value)]));
        });
        break;
      }
      case "list":
      case "mapping": {
        control = h("textarea", { class: "cnb-control cnb-json", rows: 3, spellcheck: "false", "data-focus-key": key });
        control.value = value === undefined ? "" : JSON.stringify(value, null, 1);
        control.placeholder = type === "list" ? '["a", "b"]' : '{"key": "value"}';
        control.addEventListener("change", () => {
          const raw = control.value.trim();
          if (raw === "") return store(undefined);
          let parsed;
          try {
            parsed = JSON.parse(raw);
          } catch (err) {
            return setError(`invalid JSON: ${err.message}`);
          }
          if (type === "list" && !Array.isArray(parsed)) return setError("must be a JSON list [...]");
          if (type === "mapping" && !isPlainObject(parsed)) return setError("must be a JSON object {...}");
          store(parsed);
        });
        break;
      }
      case "expression": {
        control = h("input", { class: "cnb-control cnb-mono", type: "text", spellcheck: "false", "data-focus-key": key });
        control.value = value === undefined || value === null ? "" : String(value);
        control.placeholder = "a Python expression";
        control.addEventListener("change", () => store(control.value));
        break;
      }
      default: {
        control = h("input", { class: "cnb-control", type: "text", "data-focus-key": key });
        control.value = value === undefined || value === null ? "" : String(value);
        if (spec.default !== undefined && spec.default !== null) control.placeholder = String(spec.default);
        control.addEventListener("change", () => store(control.value));
      }
    }
    const label = h("label", { class: "cnb-field-label" }, [
      h("span", { text: name }),
      spec.required ? h("span", { class: "cnb-required", title: "required", text: " *" }) : null,
      h("span", { class: "cnb-field-type", text: ` ${type}` }),
    ]);
    const row = h("div", { class: "cnb-field-row" }, [control]);
    const inputs = this.graph.inputs.filter((i) => typeof i.name === "string" && i.name);
    const bound = typeof node.bind[name] === "string" ? node.bind[name] : null;
    if (inputs.length || bound) {
      const bind = h("select", { class: "cnb-bind", title: "a value, or bound to one of the workflow's inputs", "data-focus-key": `bind:${name}` });
      bind.append(h("option", { value: "", text: "value" }));
      const names = inputs.map((i) => i.name);
      if (bound && !names.includes(bound)) names.push(bound);
      for (const n of names) {
        const opt = h("option", { value: n, text: `input ${n}` });
        if (n === bound) opt.selected = true;
        bind.append(opt);
      }
      bind.addEventListener("change", () => {
        if (bind.value) node.bind[name] = bind.value;
        else delete node.bind[name];
        field.classList.toggle("cnb-bound", !!bind.value);
        control.disabled = !!bind.value;
        this.commit();
      });
      row.append(bind);
    }
    if (bound) {
      field.classList.add("cnb-bound");
      control.disabled = true;
    }
    field.append(label, row);
    if (spec.help) field.append(h("div", { class: "cnb-field-help", text: String(spec.help) }));
    field.append(error);
    return field;
  }

  renderInputsPanel() {
    const inputs = this.graph.inputs;
    this.panel.append(
      h("div", { class: "cnb-panel-head" }, [
        h("div", { class: "cnb-panel-title", text: "Workflow inputs" }),
        h("div", { class: "cnb-panel-sub", text: "The parameters cell. Select a node to edit it." }),
      ]),
    );
    const list = h("div", { class: "cnb-inputs" });
    inputs.forEach((input, index) => list.append(this.inputRow(input, index)));
    if (!inputs.length) list.append(h("div", { class: "cnb-muted", text: "No inputs." }));
    const add = h("button", { class: "cnb-btn cnb-input-add", type: "button", text: "+ Add input" });
    add.addEventListener("click", () => {
      const taken = new Set(inputs.map((i) => i.name));
      let n = 1;
      while (taken.has(`input_${n}`)) n++;
      inputs.push({ name: `input_${n}`, type: "string", default: "", help: "", secret: false });
      this.commit();
      this.renderPanel();
      const rows = this.panel.querySelectorAll(".cnb-input-name");
      if (rows.length) rows[rows.length - 1].focus();
    });
    this.panel.append(list, add);
  }

  inputRow(input, index) {
    const type = INPUT_TYPES.includes(input.type) ? input.type : "string";
    const row = h("div", { class: "cnb-input-row", "data-input": input.name || "" });
    const error = h("div", { class: "cnb-field-error" });
    const setError = (msg) => {
      error.textContent = msg || "";
      row.classList.toggle("cnb-invalid", !!msg);
    };
    const name = h("input", { class: "cnb-input-name cnb-mono", type: "text", value: input.name || "", "data-focus-key": `input:${index}:name`, placeholder: "name", spellcheck: "false" });
    name.addEventListener("change", () => {
      const next = name.value.trim();
      if (!IDENT.test(next)) return setError("a name is a Python identifier (letters, digits, _)");
      if (this.graph.inputs.some((i, j) => j !== index && i.name === next)) return setError(`${next} is already an input`);
      const old = input.name;
      input.name = next;
      for (const node of this.graph.nodes) {
        for (const [param, bound] of Object.entries(node.bind || {})) if (bound === old) node.bind[param] = next;
      }
      row.dataset.input = next;
      setError("");
      this.commit();
    });
    const typeSel = h("select", { class: "cnb-input-type", "data-focus-key": `input:${index}:type` }, INPUT_TYPES.map((t) => h("option", { value: t, text: t, selected: t === type })));
    typeSel.addEventListener("change", () => {
      const next = typeSel.value;
      input.type = next;
      input.default = convertDefault(input.default, next);
      this.commit();
      this.renderPanel();
    });
    let def;
    const defKey = `input:${index}:default`;
    if (type === "boolean") {
      def = h("input", { class: "cnb-input-default", type: "checkbox", "data-focus-key": defKey });
      def.checked = !!input.default;
      def.addEventListener("change", () => {
        input.default = def.checked;
        this.commit();
      });
    } else {
      const json = type === "list" || type === "mapping";
      def = h("input", {
        class: `cnb-input-default${json ? " cnb-mono" : ""}`,
        type: type === "integer" || type === "number" ? "number" : "text",
        step: type === "integer" ? "1" : "any",
        placeholder: "default",
        "data-focus-key": defKey,
      });
      def.value = input.default === undefined || input.default === null ? "" : json ? JSON.stringify(input.default) : String(input.default);
      def.addEventListener("change", () => {
        const raw = def.value;
        let value;
        if (type === "integer" || type === "number") {
          if (raw.trim() === "") value = null;
          else {
            value = Number(raw);
            if (!Number.isFinite(value)) return setError("not a number");
            if (type === "integer" && !Number.isInteger(value)) return setError("must be a whole number");
          }
        } else if (json) {
          if (raw.trim() === "") value = type === "list" ? [] : {};
          else {
            try {
              value = JSON.parse(raw);
            } catch (err) {
              return setError(`invalid JSON: ${err.message}`);
            }
            if (type === "list" && !Array.isArray(value)) return setError("must be a JSON list [...]");
            if (type === "mapping" && !isPlainObject(value)) return setError("must be a JSON object {...}");
          }
        } else value = raw;
        setError("");
        input.default = value;
        this.commit();
      });
    }
    const remove = h("button", { class: "cnb-btn cnb-input-remove", type: "button", title: `remove ${input.name}`, text: "×" });
    remove.addEventListener("click", () => {
      const gone = input.name;
      this.graph.inputs.splice(index, 1);
      for (const node of this.graph.nodes) {
        for (const [param, bound] of Object.entries(node.bind || {})) if (bound === gone) delete node.bind[param];
      }
      this.commit();
      this.renderPanel();
    });
    const help = h("input", { class: "cnb-input-help", type: "text", placeholder: "help (optional)", value: input.help || "", "data-focus-key": `input:${index}:help` });
    help.addEventListener("change", () => {
      input.help = help.value;
      this.commit();
    });
    const secret = h("input", { class: "cnb-input-secret", type: "checkbox", "data-focus-key": `input:${index}:secret` });
    secret.checked = !!input.secret;
    secret.addEventListener("change", () => {
      input.secret = secret.checked;
      this.commit();
    });
    row.append(
      h("div", { class: "cnb-input-main" }, [name, typeSel, remove]),
      h("div", { class: "cnb-input-more" }, [def, h("label", { class: "cnb-secret-label", title: "a secret: not shown in outputs" }, [secret, " secret"])]),
      help,
      error,
    );
    return row;
  }
}

function convertDefault(value, type) {
  switch (type) {
    case "integer": {
      const n = Number(value);
      return Number.isFinite(n) ? Math.trunc(n) : 0;
    }
    case "number": {
      const n = Number(value);
      return Number.isFinite(n) ? n : 0;
    }
    case "boolean":
      return value === true || value === "true" || value === 1;
    case "list":
      return Array.isArray(value) ? value : [];
    case "mapping":
      return isPlainObject(value) ? value : {};
    default:
      return value === undefined || value === null ? "" : typeof value === "string" ? value : JSON.stringify(value);
  }
}

function curve(x1, y1, x2, y2) {
  const dx = Math.max(40, Math.abs(x2 - x1) * 0.5);
  return `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
}

export default {
  render({ model, el }) {
    let editor;
    try {
      editor = new Editor(model, el);
    } catch (err) {
      console.error("casare_nb graph editor:", err);
      el.append(h("pre", { class: "cnb-crash", text: `The graph editor failed to start: ${err && err.stack ? err.stack : err}` }));
      return undefined;
    }
    return () => editor.destroy();
  },
};
