"""Reading runs, and showing them as tables and figures: shared by runs, compare, plot, eval and sweep."""

from .figures import (
                      PLOT_SUFFIXES,
                      confusion_figure,
                      curves_figure,
                      legend_labels,
                      log_if_wide,
                      metric_axis,
                      save_figure,
                      steps_figure,
                      sweep_figure,
)
from .read import (
                      ROW_KEYS,
                      all_keys,
                      epoch_curves,
                      find_runs,
                      is_sweep,
                      load_run,
                      model_name,
                      read_run,
                      reads,
                      records,
                      resolve_run,
                      runs_of,
                      select,
                      sort_rows,
                      swept_keys,
                      task_label,
                      value_of,
                      varying_keys,
)
from .tables import (
                      COMPARE_METRICS,
                      FORMATS,
                      STATUS_STYLE,
                      cell,
                      compare,
                      console,
                      eval_tables,
                      predictions_table,
                      render,
                      rich_table,
                      runs_table,
)

__all__ = ["COMPARE_METRICS", "FORMATS", "PLOT_SUFFIXES", "ROW_KEYS", "STATUS_STYLE", "all_keys",
           "cell", "compare", "confusion_figure", "console", "curves_figure", "epoch_curves",
           "eval_tables", "find_runs", "is_sweep", "legend_labels", "load_run", "log_if_wide", "metric_axis",
           "model_name", "predictions_table", "read_run", "reads", "records", "render", "resolve_run", "rich_table", "runs_of",
           "runs_table", "save_figure", "select", "sort_rows", "steps_figure", "sweep_figure", "swept_keys", "task_label",
           "value_of", "varying_keys"]
