"""DDP ranks that read node-local copies of the data: before the first iteration they agree on what they loaded, or
all stop together in one line naming the ranks and what differs (two gloo ranks, one spawn, each rank building a
Trainer on its own --data-root; the last case through the training CLI, which says it once, on rank 0)."""
import contextlib
import io
import json
import os
import shutil

import pytest
import torch.multiprocessing as mp
from PIL import Image
from test_distributed import _free_port

from fastebm.run.distributed import data_difference

WORLD = 2
CASES = ("partial", "missing_class", "unreadable", "same")
TINY = dict(dataset="folder", depth=10, width=1, buffer_size=8, batch_size=2, cls_batch_size=2, epochs=1,
            iters_per_epoch=1, progress=False, device="cpu")


def _copy(root, classes=("cat", "dog", "owl"), per_class=3):
    for split, n in (("train", per_class), ("test", 1)):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * len(c), 10 * i, 0)).save(os.path.join(root, split, c, f"{i}.png"))


def _worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    import torch

    from fastebm.config.options import resolve
    from fastebm.run.distributed import exit_process, init_from_env
    from fastebm.run.trainer import Trainer
    from fastebm.train import main

    torch.set_num_threads(1)
    assert init_from_env("cpu", timeout_s=60)
    seen = {}
    for case in CASES:  # rank 0 reads the whole copy, rank 1 its own
        root = os.path.join(tmp, "full" if rank == 0 or case == "same" else case)
        try:
            Trainer(resolve(dict(TINY, data_root=root, out=os.path.join(tmp, f"run-{case}"))))
            seen[case] = "ok"
        except Exception as e:  # noqa: BLE001 - the test compares what each rank raised
            seen[case] = f"{type(e).__name__}: {e}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # the CLI: exit 2 on both ranks, the line on rank 0 only
        try:
            main(["--dataset", "folder", "--data-root", os.path.join(tmp, "full" if rank == 0 else "missing_class"),
                  "--depth", "10", "--width", "1", "--buffer-size", "8", "--batch-size", "2", "--cls-batch-size",
                  "2", "--epochs", "1", "--iters-per-epoch", "1", "--device", "cpu", "--out",
                  os.path.join(tmp, "run-cli")])
            seen["cli"] = 0
        except SystemExit as e:
            seen["cli"] = e.code
    seen["cli_err"] = [line for line in err.getvalue().splitlines() if "error" in line]
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    exit_process(0, multi_process=True)  # as fastebm.train under torchrun (the CLI shut the process group down)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("ddp-data"))
    _copy(os.path.join(tmp, "full"))
    _copy(os.path.join(tmp, "partial"))
    os.remove(os.path.join(tmp, "partial", "train", "dog", "2.png"))  # a copy that stopped early
    _copy(os.path.join(tmp, "missing_class"), classes=("cat", "dog"))
    shutil.copytree(os.path.join(tmp, "full"), os.path.join(tmp, "unreadable"))
    shutil.rmtree(os.path.join(tmp, "unreadable", "train", "owl"))  # a class on storage not mounted there
    os.symlink("/mnt/fastebm-not-mounted/owl", os.path.join(tmp, "unreadable", "train", "owl"))
    mp.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
    return [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(WORLD)], tmp


def test_ranks_that_loaded_different_data_stop_together_naming_the_difference(ranks):
    (r0, r1), tmp = ranks
    for case in ("partial", "missing_class", "unreadable"):
        assert r0[case] == r1[case] and r0[case].startswith("DataMismatch: "), (case, r0[case], r1[case])
    assert ("rank 1 differs from rank 0: 9 training images on rank 0, 8 on rank 1 (class 'dog': 3 vs 2); every "
            "rank must read the same data") in r0["partial"]
    assert "rank 1 differs from rank 0: rank 1 lacks class(es) 'owl'; 9 training images on rank 0, 6 on rank 1; " \
           "test split: 3 images on rank 0, 2 on rank 1" in r0["missing_class"]
    link = os.path.join(tmp, "unreadable", "train", "owl")
    assert f"rank 1 could not load the data: folder: {link!r} is a link to '/mnt/fastebm-not-mounted/owl'" \
           in r0["unreadable"]
    assert r0["same"] == r1["same"] == "ok"  # the same files: training goes on


def test_the_cli_says_it_once_and_every_rank_exits_2(ranks):
    (r0, r1), _ = ranks
    assert r0["cli"] == r1["cli"] == 2
    assert len(r0["cli_err"]) == 1 and "error: the ranks loaded different data: rank 1 differs" in r0["cli_err"][0]
    assert r1["cli_err"] == []


def test_the_difference_names_what_differs():
    fp = {"classes": ["a", "b"], "images": 4, "shape": [3, 8, 8], "per_class": [2, 2], "files": "x",
          "test images": None}
    assert data_difference([fp, dict(fp), dict(fp)]) is None
    renamed = dict(fp, files="y")
    assert "rank 2 differs from rank 0: the same counts, but other files" in data_difference([fp, fp, renamed])
    assert "rank 1 (and rank(s) 2) differs from rank 0: images of shape [3, 8, 8] on rank 0, [3, 16, 16] on " \
           "rank 1" in data_difference([fp, dict(fp, shape=[3, 16, 16]), dict(fp, shape=[3, 16, 16])])
    same_error = {"error": "folder: expected class folders under '/d/train', found no such folder"}
    assert data_difference([same_error, same_error]) == same_error["error"]  # as one process would say it
