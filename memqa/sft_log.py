"""What SFT logs as it steps: loss and lr per optimizer step, to the rows of the loss CSV and to DVCLive (so
`dvc exp show` follows a running experiment)."""
from __future__ import annotations

from pathlib import Path

from memqa.distributed import is_main_process


def start_live(live_dir: Path | None):
    """A DVCLive logger (step loss and lr, so `dvc exp show` follows a running experiment); main process only."""
    if live_dir is None or not is_main_process():
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)


def end_live(live, summary: dict | None = None) -> None:
    if live is None:
        return
    live.summary.update(summary or {})
    live.end()
    plots = Path(live.dir) / "plots" / "metrics"  # a declared DVC plot: exists, with headers, even when empty
    for name in ("loss", "lr"):
        if not (plots / f"{name}.tsv").is_file():
            plots.mkdir(parents=True, exist_ok=True)
            (plots / f"{name}.tsv").write_text(f"step\t{name}\n")


def log_step(log: list[dict], live, loss: float, lr: float) -> None:
    """The step's loss and lr: to the CSV rows, and to DVCLive (so `dvc exp show` follows a running run)."""
    log.append({"step": len(log) + 1, "loss": round(loss, 5), "lr": lr})
    if live is not None:
        live.step = len(log)
        live.log_metric("loss", round(loss, 5))
        live.log_metric("lr", lr)
        live.next_step()
