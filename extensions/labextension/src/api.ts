/**
 * Calls to the casare_nb server extension (routes under `<base_url>/casare/...`,
 * see docs/jupyter.md), through `ServerConnection.makeRequest` so the token,
 * cookie and XSRF header go as for every Jupyter API.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** An error answer (`{"detail": "one line"}` with a 4xx/5xx status), or no answer (status 0). */
export class CasareError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string
  ) {
    super(detail);
    this.name = 'CasareError';
  }
}

/** One parameter of a `ParamSchema` (casare_nb.core.parameters_cell.ParamSpec). */
export interface IParamSpec {
  name: string;
  annotation: string | null;
  type_repr: string;
  required: boolean;
  has_default: boolean;
  default: unknown;
  default_source: string | null;
  secret: boolean;
  choices: unknown[] | null;
  line: number;
}

export interface IParamSchema {
  has_cell: boolean;
  cell_index: number | null;
  params: { [name: string]: IParamSpec };
}

/** Answer of `GET /casare/params?path=NB`. */
export interface IParamsReply {
  workflow: string;
  parameters: IParamSchema | null;
}

/** The fields of a casare Job this extension shows. */
export interface IJob {
  job_id: string;
  workflow_path?: string;
  status?: string;
  attempt?: number;
  failed_cell?: number | null;
}

/** Answer of `POST /casare/debug/JOB`. */
export interface IDebugReply {
  path: string;
  kernel_id?: string;
  session_id?: string;
  failed_cell_index?: number | null;
  restored?: string[];
  missing?: { [name: string]: string };
  ready_s?: number;
}

/** Answer of `POST /casare/dashboard`. */
export interface IDashboardReply {
  path: string;
}

/** The `detail` of an error body as one line (FastAPI's validation lists included). */
export function detailOf(data: unknown, fallback: string): string {
  if (data && typeof data === 'object' && 'detail' in data) {
    const detail = (data as { detail: unknown }).detail;
    if (typeof detail === 'string') {
      return detail;
    }
    if (Array.isArray(detail)) {
      return detail
        .map(item => {
          if (item && typeof item === 'object') {
            const loc = (item as { loc?: unknown }).loc;
            const msg = (item as { msg?: unknown }).msg;
            const where = Array.isArray(loc) ? loc.join('.') : '';
            return where ? `${where}: ${String(msg)}` : String(msg);
          }
          return String(item);
        })
        .join('; ');
    }
    return JSON.stringify(detail);
  }
  if (typeof data === 'string' && data.trim() && !data.trim().startsWith('<')) {
    return data.trim().split('\n')[0]; // a plain-text answer; never an HTML page
  }
  return fallback;
}

/** The message of anything thrown, for a notification. */
export function messageOf(error: unknown): string {
  if (error instanceof CasareError) {
    return error.detail;
  }
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}

/**
 * Call `<base_url>/casare/<segments...>[?query]` and return the JSON answer.
 * Throws a {@link CasareError} for an error status or when the server cannot be reached.
 */
export async function requestAPI<T>(
  segments: string[],
  init: RequestInit = {},
  query?: { [key: string]: string }
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  let url = URLExt.join(
    settings.baseUrl,
    'casare',
    ...segments.map(s => encodeURIComponent(s))
  );
  if (query) {
    url += URLExt.objectToQueryString(query);
  }
  const headers = new Headers(init.headers ?? {});
  if (init.body !== undefined && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      url,
      { ...init, headers },
      settings
    );
  } catch (error) {
    throw new CasareError(
      0,
      `cannot reach the Jupyter server: ${messageOf(error)}`
    );
  }
  const text = await response.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    throw new CasareError(
      response.status,
      detailOf(
        data,
        response.status === 404
          ? `${response.status} ${response.statusText} for ${URLExt.join('casare', ...segments)} (is the casare_nb server extension enabled?)`
          : `${response.status} ${response.statusText}`.trim()
      )
    );
  }
  return data as T;
}
