/**
 * "Open with graph editor": a console whose kernel runs in the notebook's folder, running
 * `GraphEditor("<notebook file name>")` (casare_nb.widgets), next to the notebook.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { messageOf } from './api';

/** Where the command was invoked from (its `origin` argument), to find its notebook. */
export type GraphOrigin = 'filebrowser' | 'tab' | 'palette';

/** What `console:create` answers: a ConsolePanel (typed by what is used of it here). */
interface IConsolePanelLike extends Widget {
  sessionContext: { ready: Promise<void> };
  console: { inject(code: string): Promise<void> };
}

/** The code run in the console: the file name as a JSON string, a valid Python literal. */
export function graphEditorCode(name: string): string {
  return `from casare_nb.widgets import GraphEditor\nGraphEditor(${JSON.stringify(name)})`;
}

function isNotebookPath(path: string): boolean {
  return PathExt.extname(path).toLowerCase() === '.ipynb';
}

/** The notebook (Jupyter path) the command acts on, or null. */
export function graphTarget(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  factory: IFileBrowserFactory | null,
  origin: unknown
): string | null {
  if (origin === 'filebrowser') {
    return fileBrowserTarget(app, factory);
  }
  if (origin === 'tab') {
    const tab = app.contextMenuHitTest(
      node => node.dataset.type === 'document-title' && !!node.dataset.id
    );
    const panel = tab
      ? tracker.find(widget => widget.id === tab.dataset.id)
      : undefined;
    return panel ? panel.context.path : null;
  }
  return tracker.currentWidget?.context.path ?? null;
}

/** The notebook item right-clicked in a file browser (else its first selected notebook). */
function fileBrowserTarget(
  app: JupyterFrontEnd,
  factory: IFileBrowserFactory | null
): string | null {
  if (!factory) {
    return null;
  }
  const item = app.contextMenuHitTest(node =>
    node.classList.contains('jp-DirListing-item')
  );
  const browser =
    (item && factory.tracker.find(widget => widget.node.contains(item))) ||
    factory.tracker.currentWidget;
  if (!browser) {
    return null;
  }
  const name = item
    ?.querySelector('.jp-DirListing-itemText')
    ?.textContent?.trim();
  if (name) {
    for (const model of browser.model.items()) {
      if (model.name === name && model.type === 'notebook') {
        return model.path;
      }
    }
  }
  for (const model of browser.selectedItems()) {
    if (model.type === 'notebook' || isNotebookPath(model.path)) {
      return model.path;
    }
  }
  return null;
}

function unique(): string {
  return (
    Date.now().toString(36) + Math.random().toString(36).slice(2, 8)
  ).toLowerCase();
}

/** The consoles opened here, by notebook path: opening one again shows it. */
const opened = new Map<string, IConsolePanelLike>();

/**
 * Open a console for `path`: its session lives in the notebook's folder (so its kernel's
 * working directory is that folder), titled "Graph: <name>", split right of the notebook
 * when it is open; then run `GraphEditor("<name>")` in it.
 */
export async function openGraphEditor(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  path: string | null
): Promise<IConsolePanelLike | null> {
  if (!path) {
    Notification.warning('casare: choose a notebook to open with the graph editor', {
      autoClose: 5000
    });
    return null;
  }
  const existing = opened.get(path);
  if (existing && !existing.isDisposed) {
    app.shell.activateById(existing.id);
    return existing;
  }
  const folder = PathExt.dirname(path);
  const name = PathExt.basename(path);
  try {
    const specs = app.serviceManager.kernelspecs;
    await specs.ready;
    const kernel = specs.specs?.default || 'python3';
    const notebook: NotebookPanel | undefined = tracker.find(
      panel => panel.context.path === path
    );
    const panel = (await app.commands.execute('console:create', {
      // A path of its own in the folder: a new session (not the notebook's kernel), whose
      // kernel the server starts in that folder.
      path: PathExt.join(folder, `graph-editor-${unique()}`),
      name: `Graph: ${name}`,
      kernelPreference: { name: kernel },
      activate: true,
      ...(notebook ? { ref: notebook.id, insertMode: 'split-right' } : {})
    })) as IConsolePanelLike;
    panel.addClass('casare-graph-console');
    panel.node.dataset.casareGraph = path;
    opened.set(path, panel);
    panel.disposed.connect(() => {
      if (opened.get(path) === panel) {
        opened.delete(path);
      }
    });
    await panel.sessionContext.ready;
    await panel.console.inject(graphEditorCode(name));
    return panel;
  } catch (error) {
    Notification.error(`casare: ${messageOf(error)}`, { autoClose: false });
    return null;
  }
}
