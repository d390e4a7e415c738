"""Runs on clusters: a signal writes the checkpoint and exits, a requeued command resumes, one run per folder,
a failed save loses nothing, nor does a full disk between checkpoints."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fastebm.io.checkpoint as ckpt_mod
import fastebm.run.trainer as trainer_mod
from fastebm.io.checkpoint import load_checkpoint
from fastebm.run.folder import RunLock, default_run_folder, holder
from fastebm.train import main

TINY_CLI = ["--depth", "10", "--width", "1", "--buffer-size", "200", "--batch-size", "8", "--cls-batch-size", "8",
            "--train-subset", "200", "--test-subset", "32", "--no-progress", "--warmup-iters", "2", "--log-every", "1",
            "--k", "1", "--epochs", "1", "--iters-per-epoch", "6", "--ckpt-every", "100"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(out, kind=None):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if kind is None or r["kind"] == kind]


def _signal_at(monkeypatch, at: dict):
    """Make train_step send signal at[it] to this process at iteration it (as SLURM would, mid-iteration)."""
    real = trainer_mod.Trainer.train_step

    def step(self, it):
        if it in at:
            os.kill(os.getpid(), at.pop(it))
        return real(self, it)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
    return real


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_a_signal_finishes_the_iteration_writes_the_checkpoint_and_exits(tmp_path, monkeypatch, capsys, signum,
                                                                         status):
    out = str(tmp_path / "run")
    real = _signal_at(monkeypatch, {2: signum})
    assert main(TINY_CLI + ["--out", out]) == status
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 3  # the iteration it was in, finished
    stop = _rows(out, "stop")
    assert stop == [{"kind": "stop", "iter": 3, "signal": signal.Signals(signum).name,
                     "checkpoint": os.path.join(out, "ckpt.pt")}]
    captured = capsys.readouterr()
    err = captured.err
    assert f"stopped by {signal.Signals(signum).name} at iteration 3" in err and "--resume auto" in err
    summary = json.loads(captured.out)  # a script still gets one JSON document
    assert summary["stopped"] == signal.Signals(signum).name and summary["iteration"] == 3
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", real)
    assert main(TINY_CLI + ["--out", out, "--resume", "auto"]) == 0  # the requeued command goes on
    assert [r["iter"] for r in _rows(out, "train")] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 6


def test_a_second_signal_during_the_save_waits_for_it(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    _signal_at(monkeypatch, {1: signal.SIGTERM})
    real_save = ckpt_mod.torch.save
    sent = []

    def save_and_signal(obj, f, *a, **k):
        if not sent and obj.get("iteration") == 2:  # the save the first signal asked for
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", save_and_signal)
    assert main(TINY_CLI + ["--out", out]) == 143
    assert sent and "the checkpoint is being written" in capsys.readouterr().err
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 2
    assert not [n for n in os.listdir(out) if n.startswith(ckpt_mod.TMP_PREFIX)]


def test_a_second_signal_outside_the_save_stops_at_once(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    _signal_at(monkeypatch, {1: signal.SIGINT, 2: signal.SIGINT})
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_signal", lambda self, stop, done: 0)  # never reaches a stop
    assert main(TINY_CLI + ["--out", out]) == 130
    err = capsys.readouterr().err
    assert "interrupted at iteration 2" in err and "holds iteration 0" in err
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 0


def test_sigterm_from_outside_the_process(tmp_path):
    """A real SIGTERM to ``python -m fastebm.train`` (as ``scancel`` or ``docker stop`` send it)."""
    out = str(tmp_path / "run")
    argv = [a if a != "6" else "100000" for a in TINY_CLI] + ["--out", out]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "fastebm.train", *argv], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.isfile(os.path.join(out, "metrics.jsonl")) and len(_rows(out, "train")) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    stopped_at = _rows(out, "stop")[0]["iter"]
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == stopped_at >= 2
    assert max(r["iter"] for r in _rows(out, "train")) == stopped_at


def test_resume_auto_starts_resumes_and_refuses_other_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/<dataset>-<model>-k<K> here
    argv = TINY_CLI + ["--resume", "auto"]
    assert main(argv) == 0
    out = os.path.join("runs", "digits-mjem-k1")
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 6
    capsys.readouterr()
    assert main(argv) == 0  # requeued after the end: says it is done, trains nothing
    assert "is done: iteration 6 of 6" in capsys.readouterr().err
    assert not os.path.exists(os.path.join("runs", "digits-mjem-k1-2"))
    with pytest.raises(SystemExit) as e:
        main(argv + ["--lr", "0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "holds a run with other options (--lr" in err[0]


def test_one_run_per_folder(tmp_path, capsys):
    out = str(tmp_path / "run")
    lock = RunLock(out)  # another run holds it
    try:
        assert holder(out) == os.getpid()
        with pytest.raises(SystemExit) as e:
            main(TINY_CLI + ["--out", out])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and f"in use by another run (pid {os.getpid()})" in err[0]
        assert not os.path.exists(os.path.join(out, "ckpt.pt"))
    finally:
        lock.release()
    assert holder(out) is None
    assert main(TINY_CLI + ["--out", out]) == 0  # free again


def test_a_repeated_default_command_skips_a_folder_in_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = default_run_folder("digits", "mjem", 5)
    lock = RunLock(base)
    try:
        assert default_run_folder("digits", "mjem", 5) == base + "-2"
    finally:
        lock.release()
    assert default_run_folder("digits", "mjem", 5) == base


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    real_save = ckpt_mod.torch.save

    def full_disk(obj, f, *a, **k):
        if obj.get("iteration") == 6:
            f.write(b"\0" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 100 vs 64\n"
                               "frame #0: c10::ThrowEnforceNotMet(...)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    assert main(TINY_CLI + ["--out", out, "--ckpt-every", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"stopped: cannot write '{out}{os.sep}" in err and "unexpected pos 100 vs 64" in err
    assert "MiB free there; the previous file is unchanged" in err and "frame #0" not in err
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 3
    assert not [n for n in os.listdir(out) if n.startswith(ckpt_mod.TMP_PREFIX)]
    assert torch.isfinite(load_checkpoint(os.path.join(out, "ckpt.pt"))["buffer"]["samples"]).all()


def test_a_resume_says_where_it_goes_on_and_what_changed(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    real = _signal_at(monkeypatch, {2: signal.SIGTERM})
    assert main(TINY_CLI + ["--out", out]) == 143
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", real)
    capsys.readouterr()
    assert main(["--resume", os.path.join(out, "ckpt.pt"), "--lr", "0.01"]) == 0
    err = capsys.readouterr().err
    assert "options changed from the checkpoint's: --lr 0.05 -> 0.01" in err
    assert f"resuming {os.path.join(out, 'ckpt.pt')} at iteration 3 of 6" in err


class _FillingDisk:
    """metrics.jsonl on a disk that fills up while the row of iteration ``at`` is written: half of it lands, then
    ENOSPC, and every later write fails too."""

    def __init__(self, f, at):
        self.f, self.at, self.full = f, f'"kind": "train", "iter": {at},'.encode(), False

    def write(self, data):
        data = bytes(data)
        if self.full or self.at in data:
            if not self.full:
                self.f.write(data[:len(data) // 2])
                self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _last_line_is_the_full_disk(err, out, path, kept=""):
    """The one line of a full disk during a save: the file, the cause, the free space, the checkpoint intact."""
    assert "Traceback" not in err and "Exception in thread" not in err, err
    lines = [line for line in err.strip().splitlines() if "stopped" in line]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    start = f"python -m fastebm.train: stopped: cannot write {path!r}: No space left on device, "
    end = f" MiB free there{kept}; the last checkpoint {os.path.join(out, 'ckpt.pt')} holds iteration 3"
    assert lines[0].startswith(start) and lines[0].endswith(end), err
    assert lines[0][len(start):-len(end)].isdigit(), err


def test_a_full_disk_between_checkpoints_is_one_line_and_loses_no_row(tmp_path, monkeypatch, capsys):
    """ENOSPC in metrics.jsonl at iteration 5, between the checkpoints of iterations 3 and 6: the one line of a
    full disk during a save (the file, the cause, the free space), exit 1, ckpt.pt of iteration 3 intact, every row
    before whole (the half row taken back), and the same command goes on once there is room."""
    import fastebm.run.log as runlog_mod

    out = str(tmp_path / "run")
    real_open = open

    def on_a_filling_disk(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _FillingDisk(f, 5) if str(path).endswith("metrics.jsonl") and "a" in mode else f

    monkeypatch.setattr(runlog_mod, "open", on_a_filling_disk, raising=False)
    assert main(TINY_CLI + ["--out", out, "--ckpt-every", "3"]) == 1
    err = capsys.readouterr().err
    _last_line_is_the_full_disk(err, out, os.path.join(out, "metrics.jsonl"), "; the rows logged before it are kept")
    assert [r["iter"] for r in _rows(out, "train")] == [1, 2, 3, 4]  # every line whole JSON: no half row
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 3
    monkeypatch.undo()  # room again: the requeued command goes on
    assert main(TINY_CLI + ["--out", out, "--ckpt-every", "3", "--resume", "auto"]) == 0
    assert [r["iter"] for r in _rows(out, "train")] == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_under_tensorboard_is_the_same_one_line(tmp_path, monkeypatch, capsys):
    """ENOSPC in TensorBoard's writer thread (its event file) at iteration 5: no thread traceback, no second error
    at close, the same one line naming the event file; metrics.jsonl keeps every row written, ckpt.pt iteration 3."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    out, full = str(tmp_path / "run"), []
    real_write, real_step = RecordWriter.write, trainer_mod.Trainer.train_step

    def write(self, data):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    def step(self, it):
        if it == 4:
            full.append(it)
        return real_step(self, it)

    monkeypatch.setattr(RecordWriter, "write", write)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
    assert main(TINY_CLI + ["--out", out, "--ckpt-every", "3"]) == 1
    err = capsys.readouterr().err
    [events] = [f for f in os.listdir(out) if f.startswith("events.out.tfevents.")]
    _last_line_is_the_full_disk(err, out, os.path.join(out, events))
    assert [r["iter"] for r in _rows(out, "train")] == [1, 2, 3, 4, 5]  # row 5 was written before TensorBoard's
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iteration"] == 3


def test_a_full_disk_when_a_resume_rewrites_the_log_leaves_it_unchanged(tmp_path, monkeypatch):
    from fastebm.run.log import RunLog, RunLogError

    log = RunLog(str(tmp_path))
    for it in (1, 2, 3):
        log({"kind": "train", "iter": it})
    log.close()
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real_open = open

    def full(path, mode="r", *a, **k):
        if ".tmp-" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("fastebm.run.log.open", full, raising=False)
    with pytest.raises(RunLogError, match="cannot write .*metrics.jsonl': No space left on device, .* MiB free "
                                          "there; it is unchanged"):
        log.drop_rows_after(1)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before and os.listdir(tmp_path) == ["metrics.jsonl"]
