"""What a person watching a training run sees: the Prefect UI, the terminal and the run's logs.

One module per concern; import from the module (there is no re-export here):

- `names`: the run's name and the artifact keys;
- `progress`: percent, ETA, the progress line, and the sinks it goes to (terminal or logs);
- `loss_curve`, `metrics_table`, `summary`: pure renderers (SVG, table rows, markdown),
  importable without Prefect;
- `prefect_artifacts`: `RunReporter`, the job's artifacts in the Prefect UI;
- `run_logs`: library loggers and the trainer's log lines in the run's logs;
- `job_summary`: the end of a job published (`summary.md`, `loss_curve.svg`, the artifact).

The deployment run form lives in deployments/run_form.py.
"""
