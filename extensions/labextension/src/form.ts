/**
 * The body of the "Submit this notebook" dialog: one field per parameter of the
 * notebook's parameters cell, and the priority.
 *
 * Every field holds text as a person would type it after `-p NAME` (the orchestrator reads
 * `raw_parameters` that way): a field is sent only when it differs from what the dialog
 * first showed (the notebook's default), or when its parameter is required and not empty,
 * so an untouched default stays the notebook's own.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IParamSchema, IParamSpec } from './api';

export const PRIORITIES = ['low', 'normal', 'high', 'critical'];

/** What the dialog gives back on OK. */
export interface ISubmitValues {
  /** name -> the text of its field as shown ("True"/"False" for a checkbox). */
  fields: { [name: string]: string };
  /** The subset to send as `raw_parameters`. */
  raw: { [name: string]: string };
  priority: string;
}

/** Problems to show: under a field (by parameter name) or at the top (`''`). */
export type FieldErrors = { [name: string]: string[] };

type Control = HTMLInputElement | HTMLSelectElement;

/** How a choice is written as text (Python's spelling, as `_from_cli` matches it). */
export function choiceText(choice: unknown): string {
  if (choice === null || choice === undefined) {
    return 'None';
  }
  if (typeof choice === 'boolean') {
    return choice ? 'True' : 'False';
  }
  if (typeof choice === 'string' || typeof choice === 'number') {
    return String(choice);
  }
  return JSON.stringify(choice);
}

/** The text a field starts with: the default as text, else its source, else empty. */
export function defaultText(spec: IParamSpec): string {
  if (!spec.has_default) {
    return '';
  }
  const value = spec.default;
  if (typeof value === 'string') {
    return value;
  }
  if (typeof value === 'boolean') {
    return value ? 'True' : 'False';
  }
  if (typeof value === 'number') {
    return String(value);
  }
  if (value === null || value === undefined) {
    const source = spec.default_source ?? '';
    return source === 'None' ? '' : source;
  }
  return JSON.stringify(value);
}

export type FieldKind = 'number' | 'checkbox' | 'select' | 'password' | 'text';

export function fieldKind(spec: IParamSpec): FieldKind {
  if (spec.choices && spec.choices.length > 0) {
    return 'select';
  }
  if (spec.secret) {
    return 'password';
  }
  const type = (spec.type_repr || '').trim();
  if (type === 'bool') {
    return 'checkbox';
  }
  if (type === 'int' || type === 'float') {
    return 'number';
  }
  return 'text';
}

/**
 * Which parameter each part of an error `detail` is about. The parts are split on "; "
 * (how the orchestrator joins several problems). A part goes under the known parameter
 * whose quoted name (`'n'` or `"n"`) comes first in it, else the one named as a whole word
 * (when the part quotes nothing), else to the top (key `''`).
 */
export function attributeErrors(detail: string, names: string[]): FieldErrors {
  const errors: FieldErrors = {};
  const add = (key: string, text: string) => {
    (errors[key] = errors[key] ?? []).push(text);
  };
  const parts = detail
    .split(/;\s+/)
    .map(p => p.trim())
    .filter(p => p.length > 0);
  for (const part of parts.length ? parts : [detail]) {
    add(fieldOf(part, names), part);
  }
  return errors;
}

function fieldOf(part: string, names: string[]): string {
  let best = '';
  let bestAt = Infinity;
  const quoted = /(['"])([^'"]+)\1/g;
  let quotedAny = false;
  for (let m = quoted.exec(part); m !== null; m = quoted.exec(part)) {
    quotedAny = true;
    if (names.includes(m[2]) && m.index < bestAt) {
      best = m[2];
      bestAt = m.index;
    }
  }
  if (best || quotedAny) {
    return best;
  }
  for (const name of names) {
    const at = part.search(new RegExp(`(^|[^\\w])${escapeRegExp(name)}($|[^\\w])`));
    if (at >= 0 && at < bestAt) {
      best = name;
      bestAt = at;
    }
  }
  return best;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The dialog body. DOM hooks: see "Lab extension DOM hooks" in docs/jupyter.md. */
export class SubmitForm
  extends Widget
  implements Dialog.IBodyWidget<ISubmitValues>
{
  constructor(
    schema: IParamSchema | null,
    previous?: ISubmitValues,
    errors: FieldErrors = {}
  ) {
    super();
    this.addClass('casare-submit-form');
    const specs = schema ? Object.values(schema.params) : [];
    const known = new Set(specs.map(s => s.name));

    const top = document.createElement('div');
    top.className = 'casare-submit-error';
    const topErrors = [...(errors[''] ?? [])];
    for (const [name, list] of Object.entries(errors)) {
      if (name && !known.has(name)) {
        topErrors.push(...list);
      }
    }
    top.textContent = topErrors.join('\n');
    top.hidden = topErrors.length === 0;
    this.node.appendChild(top);

    if (specs.length === 0) {
      const none = document.createElement('p');
      none.className = 'casare-submit-noparams';
      none.textContent =
        schema && schema.has_cell
          ? 'The parameters cell declares no parameters.'
          : 'This notebook has no parameters cell: it runs as it is.';
      this.node.appendChild(none);
    }

    for (const spec of specs) {
      const kind = fieldKind(spec);
      const row = document.createElement('div');
      row.className = 'casare-param';
      row.dataset.casareParam = spec.name;
      row.dataset.casareKind = kind;

      const id = `casare-param-${spec.name}`;
      const label = document.createElement('label');
      label.htmlFor = id;
      label.className = 'casare-param-label';
      label.textContent = spec.name + (spec.required ? ' *' : '');
      const type = document.createElement('span');
      type.className = 'casare-param-type';
      type.textContent = spec.annotation ?? spec.type_repr;

      const control = this._makeControl(spec, kind);
      control.id = id;
      control.name = id;
      control.dataset.casareParam = spec.name;
      control.classList.add('casare-param-input');
      // What the field first shows is the baseline: unchanged, it is not sent.
      this._baseline.set(spec.name, valueOf(control));
      const earlier = previous?.fields[spec.name];
      if (earlier !== undefined) {
        setValue(control, earlier);
      }

      const error = document.createElement('div');
      error.className = `casare-param-error casare-param-error-${spec.name}`;
      error.dataset.casareParamError = spec.name;
      const mine = errors[spec.name] ?? [];
      error.textContent = mine.join('\n');
      error.hidden = mine.length === 0;
      if (mine.length) {
        row.classList.add('casare-mod-error');
        control.setAttribute('aria-invalid', 'true');
      }

      if (kind === 'checkbox') {
        const line = document.createElement('div');
        line.className = 'casare-param-checkline';
        line.append(control, label, type);
        row.append(line, error);
      } else {
        const head = document.createElement('div');
        head.className = 'casare-param-head';
        head.append(label, type);
        row.append(head, control, error);
      }
      this._controls.set(spec.name, control);
      this._specs.set(spec.name, spec);
      this.node.appendChild(row);
    }

    const row = document.createElement('div');
    row.className = 'casare-param casare-priority';
    const label = document.createElement('label');
    label.htmlFor = 'casare-priority';
    label.className = 'casare-param-label';
    label.textContent = 'priority';
    this._priority = document.createElement('select');
    this._priority.id = 'casare-priority';
    this._priority.name = 'casare-priority';
    this._priority.className = 'jp-mod-styled casare-priority-input';
    for (const p of PRIORITIES) {
      this._priority.appendChild(new Option(p, p));
    }
    this._priority.value = previous?.priority ?? 'normal';
    const head = document.createElement('div');
    head.className = 'casare-param-head';
    head.append(label);
    row.append(head, this._priority);
    this.node.appendChild(row);
  }

  getValue(): ISubmitValues {
    const fields: { [name: string]: string } = {};
    const raw: { [name: string]: string } = {};
    for (const [name, control] of this._controls) {
      const text = valueOf(control);
      fields[name] = text;
      const spec = this._specs.get(name)!;
      if (spec.required ? text !== '' : text !== this._baseline.get(name)) {
        raw[name] = text;
      }
    }
    return { fields, raw, priority: this._priority.value };
  }

  private _makeControl(spec: IParamSpec, kind: FieldKind): Control {
    const initial = defaultText(spec);
    if (kind === 'select') {
      const select = document.createElement('select');
      select.className = 'jp-mod-styled';
      const texts = (spec.choices ?? []).map(choiceText);
      if (!texts.includes(initial)) {
        select.appendChild(new Option(spec.required ? '(choose)' : '', ''));
      }
      for (const text of texts) {
        select.appendChild(new Option(text, text));
      }
      select.value = texts.includes(initial) ? initial : '';
      return select;
    }
    const input = document.createElement('input');
    if (kind === 'checkbox') {
      input.type = 'checkbox';
      input.checked = initial === 'True';
      return input;
    }
    input.className = 'jp-mod-styled';
    input.type = kind;
    input.spellcheck = false;
    input.autocomplete = kind === 'password' ? 'new-password' : 'off';
    if (kind === 'number') {
      input.step = 'any';
    }
    input.value = initial;
    if (spec.default_source && !spec.secret) {
      input.placeholder = spec.default_source;
    }
    return input;
  }

  private _controls = new Map<string, Control>();
  private _specs = new Map<string, IParamSpec>();
  private _baseline = new Map<string, string>();
  private _priority: HTMLSelectElement;
}

function valueOf(control: Control): string {
  if (control instanceof HTMLInputElement && control.type === 'checkbox') {
    return control.checked ? 'True' : 'False';
  }
  return control.value;
}

function setValue(control: Control, text: string): void {
  if (control instanceof HTMLInputElement && control.type === 'checkbox') {
    control.checked = text === 'True';
  } else {
    control.value = text;
  }
}
