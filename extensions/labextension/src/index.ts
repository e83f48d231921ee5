/**
 * casare_nb's JupyterLab extension: the commands of docs/jupyter.md ("Command ids"),
 * the notebook toolbar buttons "Submit" and "Resume from here", and "Open with graph
 * editor" in the file browser's and the notebook tab's context menus.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import {
  INotebookModel,
  INotebookTracker,
  NotebookPanel
} from '@jupyterlab/notebook';
import { ToolbarButton } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import {
  CasareError,
  IDashboardReply,
  IDebugReply,
  IJob,
  IParamsReply,
  messageOf,
  requestAPI
} from './api';
import { attributeErrors, FieldErrors, ISubmitValues, SubmitForm } from './form';
import { graphTarget, openGraphEditor } from './graph';

export namespace CommandIDs {
  export const submit = 'casare:submit-notebook';
  export const openDashboard = 'casare:open-dashboard';
  export const debug = 'casare:debug';
  export const resumeDebug = 'casare:resume-debug';
  export const openGraphEditor = 'casare:open-graph-editor';
}

const CATEGORY = 'casare';

/** `metadata.casare_debug` of a debug notebook (written by the server extension). */
export interface IDebugInfo {
  job_id: string;
  attempt?: number;
  workflow?: string;
  failed_cell_id?: string;
  failed_cell_index?: number;
}

/** The notebook's `casare_debug` metadata when it has a job id, else null. */
export function debugInfo(
  model: INotebookModel | null | undefined
): IDebugInfo | null {
  if (!model) {
    return null;
  }
  const info = model.getMetadata('casare_debug') as unknown;
  if (info && typeof info === 'object') {
    const job = (info as { job_id?: unknown }).job_id;
    if (typeof job === 'string' && job) {
      return info as IDebugInfo;
    }
  }
  return null;
}

async function saveIfNeeded(panel: NotebookPanel): Promise<void> {
  await panel.context.ready;
  if (panel.context.model.dirty && !panel.context.model.readOnly) {
    await panel.context.save();
  }
}

/** "Submit this notebook": save, read its parameters, ask for values, queue a job. */
export async function submitNotebook(
  panel: NotebookPanel | null | undefined
): Promise<IJob | null> {
  if (!panel) {
    Notification.warning('casare: open a notebook to submit first', {
      autoClose: 5000
    });
    return null;
  }
  let info: IParamsReply;
  try {
    await saveIfNeeded(panel);
    info = await requestAPI<IParamsReply>(['params'], { method: 'GET' }, {
      path: panel.context.path
    });
  } catch (error) {
    Notification.error(`casare: ${messageOf(error)}`, { autoClose: false });
    return null;
  }
  const names = info.parameters ? Object.keys(info.parameters.params) : [];
  let previous: ISubmitValues | undefined;
  let errors: FieldErrors = {};
  for (;;) {
    const body = new SubmitForm(info.parameters, previous, errors);
    const result = await showDialog<ISubmitValues>({
      title: `Submit ${PathExt.basename(panel.context.path)} to casare`,
      body,
      buttons: [
        Dialog.cancelButton(),
        Dialog.okButton({ label: 'Submit', ariaLabel: 'Submit the job' })
      ],
      focusNodeSelector: '.casare-param-input, .casare-priority-input',
      hasClose: true
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    previous = result.value;
    try {
      const job = await requestAPI<IJob>(['api', 'jobs'], {
        method: 'POST',
        body: JSON.stringify({
          workflow: info.workflow,
          raw_parameters: previous.raw,
          priority: previous.priority
        })
      });
      Notification.success(`casare: job ${job.job_id} queued`, {
        autoClose: 5000
      });
      return job;
    } catch (error) {
      if (
        error instanceof CasareError &&
        error.status >= 400 &&
        error.status < 500
      ) {
        errors = attributeErrors(error.detail, names);
        continue;
      }
      Notification.error(`casare: ${messageOf(error)}`, { autoClose: false });
      return null;
    }
  }
}

function describeRestore(job: string, reply: IDebugReply): string {
  const restored = reply.restored?.length ?? 0;
  const missing = Object.keys(reply.missing ?? {});
  let text = `casare: job ${job} restored (${restored} variable${restored === 1 ? '' : 's'}`;
  if (missing.length) {
    text += `; not restored: ${missing.join(', ')}`;
  }
  return text + ')';
}

/** Resume the job of a debug notebook from its failed cell with the notebook's code. */
export async function resumeDebug(
  panel: NotebookPanel | null | undefined
): Promise<IJob | null> {
  const info = debugInfo(panel?.context.model);
  if (!panel || !info) {
    Notification.warning('casare: this is not a casare debug notebook', {
      autoClose: 5000
    });
    return null;
  }
  try {
    await saveIfNeeded(panel);
    const job = await requestAPI<IJob>(['debug', info.job_id, 'resume'], {
      method: 'POST',
      body: JSON.stringify({ path: panel.context.path })
    });
    const cell = job.failed_cell ?? info.failed_cell_index;
    const from = cell === null || cell === undefined ? '' : ` from cell ${cell}`;
    const attempt = job.attempt !== undefined ? `, attempt ${job.attempt}` : '';
    Notification.success(
      `casare: job ${job.job_id} resumed${from}: ${job.status ?? 'queued'}${attempt}`,
      { autoClose: 5000 }
    );
    return job;
  } catch (error) {
    Notification.error(`casare: ${messageOf(error)}`, { autoClose: false });
    return null;
  }
}

/** Adds "Submit" to every notebook toolbar, and "Resume from here" to debug notebooks. */
class ToolbarButtons
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  createNew(
    panel: NotebookPanel,
    context: DocumentRegistry.IContext<INotebookModel>
  ): IDisposable {
    const submit = new ToolbarButton({
      label: 'Submit',
      tooltip: 'Submit this notebook to casare as a job',
      onClick: () => void submitNotebook(panel)
    });
    submit.addClass('casare-submit-toolbar');
    submit.node.dataset.command = CommandIDs.submit;
    panel.toolbar.insertItem(10, 'casareSubmit', submit);

    let resume: ToolbarButton | null = null;
    const sync = () => {
      if (panel.isDisposed) {
        return;
      }
      const info = debugInfo(context.model);
      // Judged: "true" on a debug notebook, "false" on any other (a DOM hook for tests).
      panel.node.dataset.casareDebug = info ? 'true' : 'false';
      if (info && !resume) {
        resume = new ToolbarButton({
          label: 'Resume from here',
          tooltip:
            "Re-run this debug notebook's job from its failed cell, with the code as edited here",
          onClick: () => void resumeDebug(panel)
        });
        resume.addClass('casare-resume-toolbar');
        resume.node.dataset.command = CommandIDs.resumeDebug;
        if (!panel.toolbar.insertAfter('casareSubmit', 'casareResume', resume)) {
          panel.toolbar.insertItem(11, 'casareResume', resume);
        }
      } else if (!info && resume) {
        resume.dispose();
        resume = null;
      }
      if (resume && info) {
        resume.node.dataset.casareJob = info.job_id;
      }
    };
    void context.ready.then(sync);
    context.model.metadataChanged.connect(sync);
    return new DisposableDelegate(() => {
      context.model.metadataChanged.disconnect(sync);
      submit.dispose();
      resume?.dispose();
    });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'casare-nb:plugin',
  description:
    'casare_nb: submit this notebook, open the casare dashboard, debug a failed job, resume from here, open a notebook with the graph editor.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, IFileBrowserFactory],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    browsers: IFileBrowserFactory | null
  ) => {
    const { commands } = app;
    const current = () => tracker.currentWidget;

    commands.addCommand(CommandIDs.submit, {
      label: 'Submit this notebook',
      caption: 'Save the current notebook and submit it to casare as a job',
      isEnabled: () => current() !== null,
      execute: () => submitNotebook(current())
    });

    commands.addCommand(CommandIDs.openDashboard, {
      label: 'Open casare dashboard',
      caption: 'Open (and create if missing) casare-dashboard.ipynb',
      execute: async () => {
        try {
          const reply = await requestAPI<IDashboardReply>(['dashboard'], {
            method: 'POST'
          });
          return await commands.execute('docmanager:open', {
            path: reply.path
          });
        } catch (error) {
          Notification.error(`casare: ${messageOf(error)}`, {
            autoClose: false
          });
          return null;
        }
      }
    });

    commands.addCommand(CommandIDs.debug, {
      label: args =>
        args.job
          ? `Open failed run ${String(args.job)} in JupyterLab`
          : 'Open failed run in JupyterLab',
      caption:
        "Restore a failed job's namespace in a kernel and open its debug notebook",
      execute: async args => {
        const job = typeof args.job === 'string' ? args.job : '';
        if (!job) {
          Notification.error('casare: casare:debug needs {"job": JOB}', {
            autoClose: false
          });
          return null;
        }
        const restoring = requestAPI<IDebugReply>(['debug', job], {
          method: 'POST'
        });
        // The notification follows the request; a string is what it may carry.
        const told = restoring.then(reply => describeRestore(job, reply));
        Notification.promise<string, string, string>(told, {
          pending: {
            message: `casare: restoring job ${job}…`,
            options: { autoClose: false }
          },
          success: {
            message: (result: unknown) => String(result),
            options: { autoClose: 5000 }
          },
          error: {
            message: (error: unknown) => `casare: ${messageOf(error)}`,
            options: { autoClose: false }
          }
        });
        let reply: IDebugReply;
        try {
          reply = await restoring;
        } catch {
          return null; // already told by the notification
        }
        return commands.execute('docmanager:open', { path: reply.path });
      }
    });

    commands.addCommand(CommandIDs.resumeDebug, {
      label: 'Resume from here',
      caption:
        "Re-run the debug notebook's job from its failed cell, with the code as edited",
      isEnabled: () => debugInfo(current()?.context.model) !== null,
      isVisible: () => debugInfo(current()?.context.model) !== null,
      execute: () => resumeDebug(current())
    });

    // args: {"path": Jupyter path} or {"origin": "filebrowser" | "tab"} (the notebook
    // right-clicked); else the current notebook.
    const graphPath = (args: { [key: string]: unknown }) =>
      typeof args.path === 'string' && args.path
        ? args.path
        : graphTarget(app, tracker, browsers, args.origin);
    commands.addCommand(CommandIDs.openGraphEditor, {
      label: 'Open with graph editor',
      caption:
        'Open a console in the notebook\'s folder running GraphEditor("<notebook>")',
      isEnabled: args => graphPath(args) !== null,
      isVisible: args =>
        args.origin === undefined || graphPath(args) !== null,
      execute: args => openGraphEditor(app, tracker, graphPath(args))
    });
    if (browsers) {
      app.contextMenu.addItem({
        command: CommandIDs.openGraphEditor,
        selector: '.jp-DirListing-item[data-file-type="notebook"]',
        args: { origin: 'filebrowser' },
        rank: 3
      });
    }
    app.contextMenu.addItem({
      command: CommandIDs.openGraphEditor,
      selector: '.lm-DockPanel-tabBar .lm-TabBar-tab[data-type="document-title"]',
      args: { origin: 'tab' },
      rank: 10
    });

    const refresh = () => {
      commands.notifyCommandChanged(CommandIDs.submit);
      commands.notifyCommandChanged(CommandIDs.resumeDebug);
      commands.notifyCommandChanged(CommandIDs.openGraphEditor);
    };
    tracker.currentChanged.connect(refresh);
    tracker.widgetAdded.connect((_, panel) => {
      panel.context.model.metadataChanged.connect(() => {
        if (tracker.currentWidget === panel) {
          refresh();
        }
      });
      void panel.context.ready.then(refresh);
    });

    if (palette) {
      for (const command of [
        CommandIDs.submit,
        CommandIDs.openDashboard,
        CommandIDs.resumeDebug,
        CommandIDs.openGraphEditor
      ]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }

    app.docRegistry.addWidgetExtension('Notebook', new ToolbarButtons());
  }
};

export default plugin;
