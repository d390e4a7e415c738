"""Presets: every preset value pinned against its source; --print-config; the CLI generated from
Config; the JEM baseline's two augmented batches; LSE-JEM; the warm-up."""
import dataclasses
import json
import os

import pytest
import torch

from fastebm.config.options import MODEL_PRESETS, NONE, PRESETS, Config, resolve
from fastebm.data.datasets import load_dataset
from fastebm.data.imageset import to_float
from fastebm.run.trainer import Trainer, lr_at
from fastebm.train import build_parser, main

CIFAR10_MJEM = dict(dataset="cifar10", model="mjem", k=5)

# (overrides, field, expected value, source). Every value of PRESETS / MODEL_PRESETS and every sourced
# Config default appears here (checked by test_every_preset_value_is_pinned).
TABLE = [
    # Config defaults = the M-EBM / M-JEM recipe of the authors' code (mebm train_maebm.py, scripts/*.sh)
    (CIFAR10_MJEM, "lr", 0.1, "paper Appendix A; mebm scripts --lr .1"),
    (CIFAR10_MJEM, "weight_decay", 5e-4, "mebm train_maebm.py --weight_decay 5e-4"),
    (CIFAR10_MJEM, "grad_clip", 1.0, "mebm sample_q t.clamp(eta, -1, 1)"),
    (CIFAR10_MJEM, "clamp_x", True, "mebm sample_q clamp x"),
    (CIFAR10_MJEM, "epochs", 200, "paper Table 5; mebm scripts --n_epochs 200"),
    (CIFAR10_MJEM, "decay_epochs", [60, 120, 180], "mebm scripts --decay_epochs 60 120 180"),
    (CIFAR10_MJEM, "decay_rate", 0.2, "mebm train_maebm.py --decay_rate .2"),
    (CIFAR10_MJEM, "iters_per_epoch", 390, "50,000 // 128 (mebm utils.get_data label_bs, drop_last)"),
    (CIFAR10_MJEM, "l2", 0.5, "K rule (K >= 5)"),
    (CIFAR10_MJEM, "noise", 0.001, "K rule (K >= 5)"),
    (CIFAR10_MJEM, "momentum", 0.9, "mebm SGD momentum .9"),
    (CIFAR10_MJEM, "warmup_iters", 1000, "mebm scripts --warmup_iters 1000"),
    (CIFAR10_MJEM, "optimizer", "sgd", "mebm scripts --optimizer sgd"),
    (CIFAR10_MJEM, "batch_size", 64, "mebm --batch_size 64"),
    (CIFAR10_MJEM, "cls_batch_size", 128, "mebm utils.get_data label_bs = 128"),
    (CIFAR10_MJEM, "augment_px", False, "mebm transform_px: no augmentation"),
    (CIFAR10_MJEM, "augment_cls", True, "mebm transform_train for the labelled loader"),
    (CIFAR10_MJEM, "data_noise", 0.0, "mebm scripts --sigma .0"),
    (CIFAR10_MJEM, "step_size", 1.0, "mebm scripts --sgld_lr 1"),
    (CIFAR10_MJEM, "buffer_size", 10_000, "mebm --buffer_size 10000"),
    (CIFAR10_MJEM, "reinit_freq", 0.05, "mebm --reinit_freq 0.05"),
    (CIFAR10_MJEM, "p0", "gaussian", "mebm --init gm"),
    (CIFAR10_MJEM, "norm", "batch", "mebm scripts --norm batch"),
    (CIFAR10_MJEM, "depth", 28, "mebm scripts --depth 28"),
    (CIFAR10_MJEM, "width", 10, "mebm scripts --width 10"),
    (CIFAR10_MJEM, "max_loss", 1e5, "mebm loss.abs() > 1e5"),
    (CIFAR10_MJEM, "reg_form", "eq8", "paper Eq. 8 (choice)"),
    # K rule: mebm scripts/maebm_cifar10.sh (da79aff) comment
    (dict(dataset="cifar10", model="mebm", k=2), "l2", 0.1, "K rule K <= 2"),
    (dict(dataset="cifar10", model="mebm", k=2), "noise", 0.0, "K rule K <= 2"),
    (dict(dataset="cifar10", model="mebm", k=10), "l2", 0.5, "K rule K >= 5"),
    # cifar100
    (dict(dataset="cifar100", model="mebm", k=2), "lr", 0.02, "paper Appendix A"),
    (dict(dataset="cifar100", model="mebm", k=2), "l2", 0.1, "K rule"),
    (dict(dataset="cifar100", model="mebm", k=2), "noise", 0.0, "K rule"),
    (dict(dataset="cifar100"), "n_classes", 100, "the dataset"),
    (dict(dataset="cifar100"), "iters_per_epoch", 390, "50,000 // 128"),
    # imagenet32
    (dict(dataset="imagenet32"), "model", "mebm", "paper Table 2: ImageNet 32x32 only as unconditional M-EBM"),
    (dict(dataset="imagenet32", model="mjem"), "model", "mjem", "an explicit --model wins"),
    (dict(dataset="imagenet32"), "lr", 0.02, "paper Appendix A"),
    (dict(dataset="imagenet32"), "width", 2, "fastebm's earlier preset"),
    (dict(dataset="imagenet32"), "epochs", 50, "paper Section 5"),
    (dict(dataset="imagenet32"), "n_classes", 1000, "the dataset"),
    (dict(dataset="imagenet32"), "iters_per_epoch", 10_009, "1,281,167 // 128"),
    # celebahq128
    (dict(dataset="celebahq128"), "model", "mebm", "paper Section 5"),
    (dict(dataset="celebahq128"), "width", 5, "paper Section 5"),
    (dict(dataset="celebahq128"), "k", 5, "paper Section 5"),
    (dict(dataset="celebahq128"), "lr", 0.02, "paper Appendix A; maebm_celeba.sh"),
    (dict(dataset="celebahq128"), "decay_epochs", [80, 120, 160], "mebm scripts/maebm_celeba.sh"),
    (dict(dataset="celebahq128"), "p0", "gaussian-downsampled", "mebm train_maebm_celeba.py @32f98f9"),
    (dict(dataset="celebahq128"), "p0_size", 32, "mebm one_center.py @23b0813 ds_grain(128) = 4"),
    (dict(dataset="celebahq128"), "cov", "auto", "full at 32 px (the authors'), low-rank with --p0 gaussian"),
    (dict(dataset="celebahq128"), "image_size", 128, "the dataset"),
    (dict(dataset="celebahq128"), "iters_per_epoch", None, "from the data"),
    (dict(dataset="folder"), "iters_per_epoch", None, "from the data"),
    # digits demo
    (dict(dataset="digits"), "depth", 10, "demo"), (dict(dataset="digits"), "width", 1, "demo"),
    (dict(dataset="digits"), "epochs", 3, "demo"), (dict(dataset="digits"), "iters_per_epoch", 100, "demo"),
    (dict(dataset="digits"), "buffer_size", 1000, "demo"), (dict(dataset="digits"), "warmup_iters", 50, "demo"),
    (dict(dataset="digits"), "lr", 0.05, "demo"), (dict(dataset="digits"), "decay_epochs", [2], "demo"),
    (dict(dataset="digits"), "batch_size", 32, "demo"), (dict(dataset="digits"), "cls_batch_size", 64, "demo"),
    (dict(dataset="digits"), "log_every", 10, "demo"),
    # JEM baseline (JEM train_wrn_ebm.py defaults, README CIFAR-10 command)
    *[(dict(dataset="cifar10", model="jem"), name, value, "JEM") for name, value in dict(
        k=20, p0="uniform", l2=0.0, noise=0.01, grad_clip=None, clamp_x=False, data_noise=0.03, augment_px=True,
        cls_batch_size=64, norm="none", optimizer="adam", lr=1e-4, weight_decay=0.0, decay_epochs=[160, 180],
        decay_rate=0.3, max_loss=1e8, step_size=1.0, batch_size=64, warmup_iters=1000, epochs=200,
        buffer_size=10_000, reinit_freq=0.05, depth=28, width=10,
        iters_per_epoch=703).items()],  # (50,000 − 5,000) // 64
    # JEM++ baseline (JEMPP train_jempp.py @fba6ba5 defaults, scripts/jempp_cifar10.sh)
    *[(dict(dataset="cifar10", model="jempp"), name, value, "JEM++") for name, value in dict(
        k=10, sgld_inner_steps=5, step_size=0.2, noise=0.0, l2=0.0, p0="gaussian-mixture", data_noise=0.03,
        augment_px=True, lr=0.1, weight_decay=4e-4, epochs=150, decay_epochs=[50, 100, 125], max_loss=1e8,
        grad_clip=1.0, clamp_x=True, optimizer="sgd", momentum=0.9, decay_rate=0.2, warmup_iters=1000,
        batch_size=64, cls_batch_size=64, buffer_size=10_000, reinit_freq=0.05, depth=28, width=10, norm="batch",
        iters_per_epoch=703).items()],  # (50,000 − 5,000) // 64: --n_valid 5000, the p(x) loader of 64
    (dict(dataset="cifar100", model="jempp"), "lr", 0.1, "JEM++'s script (the paper gives no CIFAR-100 recipe)"),
    (CIFAR10_MJEM, "px_weight", 1.0, "mebm train_maebm.py --px 1."),
    (CIFAR10_MJEM, "sgld_inner_steps", 1, "SGLD, Eq. 3"),
    # LSE-JEM: the M-JEM recipe, λ = 0
    (dict(dataset="cifar10", model="lse-jem", k=5), "l2", 0.0, "fastebm's choice"),
    (dict(dataset="cifar10", model="lse-jem", k=5), "noise", 0.001, "K rule"),
    (dict(dataset="cifar10", model="lse-jem", k=5), "cls_batch_size", 128, "M-JEM recipe"),
    (dict(dataset="cifar10", model="lse-jem", k=5), "grad_clip", 1.0, "M-JEM recipe"),
]


@pytest.mark.parametrize("over,name,expected,source", TABLE,
                         ids=[f"{'-'.join(map(str, o.values()))}:{n}" for o, n, _, _ in TABLE])
def test_preset_value(over, name, expected, source):
    assert getattr(resolve(over), name) == expected, source


def test_every_preset_value_is_pinned():
    pinned = {(o.get("dataset", "digits"), o.get("model"), n) for o, n, _, _ in TABLE}
    for ds, values in PRESETS.items():
        for name in values:
            assert any(d == ds and n == name for d, _, n in pinned), (ds, name)
    for model, values in MODEL_PRESETS.items():
        for name in list(values) + (["cls_batch_size"] if model in ("jem", "jempp") else []):
            assert any(m == model and n == name for _, m, n in pinned), (model, name)


def test_explicit_values_and_none_beat_presets():
    cfg = resolve(dict(dataset="cifar10", k=2, noise=0.001, l2=0.5, grad_clip=NONE, epochs=150))
    assert (cfg.noise, cfg.l2, cfg.grad_clip, cfg.epochs) == (0.001, 0.5, None, 150)
    assert resolve(dict(dataset="cifar10", train_subset=1000)).iters_per_epoch == 1000 // 128
    with pytest.raises(ValueError, match="--l2"):
        resolve(dict(l2=NONE))


def test_warmup_is_lr_times_it_over_warmup():
    cfg = resolve(dict(CIFAR10_MJEM))
    assert lr_at(cfg, 0) == 0.0
    assert lr_at(cfg, 1) == pytest.approx(0.1 / 1000)
    assert lr_at(cfg, 500) == pytest.approx(0.05)
    assert lr_at(cfg, 1000) == pytest.approx(0.1)
    assert lr_at(cfg, 60 * 390) == pytest.approx(0.1 * 0.2)
    assert lr_at(cfg, 180 * 390) == pytest.approx(0.1 * 0.2 ** 3)


def test_a_short_run_reaches_its_learning_rate(tmp_path):
    """The warm-up takes at most a fifth of the run: a 300-iteration run (docs/training.md's small CIFAR command)
    warms up over 60 iterations instead of the recipe's 1,000; a paper-length run keeps 1,000."""
    from fastebm.data.imageset import ImageSet
    from fastebm.run.trainer import Trainer

    data = ImageSet(torch.randint(0, 256, (256, 3, 8, 8), dtype=torch.uint8), torch.arange(256) % 2, 2, "toy")
    short = Trainer(resolve(dict(dataset="folder", depth=10, width=1, epochs=1, iters_per_epoch=300,
                                 buffer_size=16, out=str(tmp_path / "a"))), data).cfg
    assert short.warmup_iters == 60 and lr_at(short, 60) == short.lr == 0.1
    long = Trainer(resolve(dict(dataset="folder", depth=10, width=1, epochs=200, iters_per_epoch=390,
                                buffer_size=16, out=str(tmp_path / "b"))), data).cfg
    assert long.warmup_iters == 1000


# ------------------------------------------------------------------------------------------ command line
def _print_config(argv, capsys):
    assert main(["--print-config"] + argv) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_done_when_checks(capsys, monkeypatch):
    import fastebm.run.trainer

    def no_data(*a, **k):
        raise AssertionError("--print-config must not load data")

    monkeypatch.setattr(fastebm.run.trainer, "load_dataset", no_data)
    d = _print_config(["--dataset", "cifar10", "--model", "mjem", "--k", "5"], capsys)
    assert (d["lr"], d["weight_decay"], d["grad_clip"], d["epochs"], d["decay_epochs"], d["iters_per_epoch"],
            d["l2"], d["noise"]) == (0.1, 5e-4, 1.0, 200, [60, 120, 180], 390, 0.5, 0.001)
    assert set(d) == {f.name for f in dataclasses.fields(Config)}
    d = _print_config(["--dataset", "cifar100", "--model", "mebm", "--k", "2"], capsys)
    assert (d["lr"], d["l2"], d["noise"]) == (0.02, 0.1, 0.0)
    d = _print_config(["--model", "jem", "--dataset", "cifar10"], capsys)
    assert (d["optimizer"], d["lr"], d["k"], d["clamp_x"], d["decay_epochs"], d["decay_rate"]) == \
        ("adam", 1e-4, 20, False, [160, 180], 0.3)
    d = _print_config(["--dataset", "imagenet32", "--grad-clip", "none", "--no-clamp-x", "--decay-epochs",
                       "--epochs", "200"], capsys)
    assert (d["grad_clip"], d["clamp_x"], d["decay_epochs"], d["epochs"], d["iters_per_epoch"]) == \
        (None, False, [], 200, 10_009)


def test_help_is_generated_from_config_with_resolved_defaults():
    text = build_parser(["--dataset", "cifar100", "--model", "mebm", "--k", "2"]).format_help()
    assert "(default: None)" not in text and "default: None" not in text
    from fastebm.config.flags import DERIVED

    for f in dataclasses.fields(Config):
        assert ("--" + f.name.replace("_", "-") in text) == (f.name not in DERIVED), f.name  # n_classes: from data
        assert f.metadata.get("help"), f"Config.{f.name} has no help text"
    flat = " ".join(text.split())
    assert "learning rate (default: 0.02)" in flat
    assert "--l2 L2 λ, L2 energy regularization (none: by the K rule) (default: 0.1)" in flat  # K = 2
    assert "(default: 60 120 180)" in flat
    jem = " ".join(build_parser(["--model", "jem"]).format_help().split())
    assert "SGLD steps K per iteration (default: 20)" in jem and "(default: 0.0001)" in jem


def test_a_new_config_field_becomes_a_flag(monkeypatch):
    import fastebm.config.flags as F
    import fastebm.train as T

    @dataclasses.dataclass(frozen=True)
    class Extended(Config):
        fid_every: int | None = dataclasses.field(default=None, metadata={"help": "epochs between FIDs"})
        best_by: list[str] = dataclasses.field(default_factory=list, metadata={"help": "metrics"})
        tensorboard: bool = dataclasses.field(default=False, metadata={"help": "write TensorBoard events"})

    monkeypatch.setattr(F, "Config", Extended)  # the flags are generated from the dataclass
    p = T.build_parser([])
    args = p.parse_args(["--fid-every", "5", "--best-by", "fid", "acc", "--tensorboard"])
    assert (args.fid_every, args.best_by, args.tensorboard) == (5, ["fid", "acc"], True)
    assert p.parse_args(["--fid-every", "none"]).fid_every is NONE
    assert p.parse_args(["--no-tensorboard"]).tensorboard is False
    assert "epochs between FIDs" in p.format_help() and "other options" in p.format_help()


def test_resume_keeps_an_explicit_none(tmp_path, monkeypatch):
    import fastebm.train as T

    stored = resolve(dict(dataset="digits", grad_clip=NONE)).to_dict()
    monkeypatch.setattr(T, "load_checkpoint", lambda path: {"config": dict(stored), "requested": {"grad_clip": None}})
    args = T.build_parser([]).parse_args(["--resume", str(tmp_path / "ckpt.pt")])
    cfg, requested, _ = T.config_from_args(args)
    assert cfg.grad_clip is None and requested == {"grad_clip": None}


# ------------------------------------------------------------------------------------------ models
TINY = dict(dataset="digits", depth=10, width=1, buffer_size=64, epochs=1, progress=False, log_every=1,
            eval_every=1000, sample_every=1000, test_subset=32, train_subset=300, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def test_jem_baseline_has_two_distinct_augmented_batches(tmp_path, digits):
    cfg = resolve(dict(TINY, model="jem", k=2, iters_per_epoch=2, data_noise=0.0, out=str(tmp_path)))
    tr = Trainer(cfg, *digits)
    gen, cls = tr.gen_batches, tr.cls_batches
    assert cls is not None and gen.augment and cls.augment and gen.batch_size == cls.batch_size == 32
    for it in range(2):
        i_gen, i_cls = gen.indices(it), cls.indices(it)
        assert not torch.equal(i_gen, i_cls)  # separate loaders (own permutations)
        for batches, idx in ((gen, i_gen), (cls, i_cls)):
            torch.manual_seed(it)
            x, y = batches.get(it)
            plain = to_float(batches.images[idx])
            assert torch.equal(y, batches.labels[idx])
            assert x.shape == plain.shape and not torch.equal(x, plain)  # crops / flips moved pixels
            changed = (x - plain).abs().flatten(1).amax(1) > 0
            assert changed.float().mean() > 0.5
    torch.manual_seed(0)
    assert not torch.equal(gen.get(0)[0], cls.get(0)[0])
    # the p(y|x) term runs on the second batch: the step gathers cls_batches' indices of the iteration
    seen = []
    orig = cls.gather
    cls.gather = lambda idx: seen.append(idx) or orig(idx)
    tr.train_step(0)
    assert len(seen) == 1 and torch.equal(seen[0], cls.indices(0))


def test_jem_batch_noise_is_added_to_both_batches(tmp_path, digits):
    cfg = resolve(dict(TINY, model="jem", k=1, iters_per_epoch=1, out=str(tmp_path)))
    assert cfg.data_noise == 0.03
    tr = Trainer(cfg, *digits)
    assert tr.gen_batches.data_noise == tr.cls_batches.data_noise == 0.03


@pytest.mark.slow
def test_lse_jem_trains_on_digits_with_finite_energies(tmp_path, digits):
    cfg = resolve(dict(TINY, model="lse-jem", k=2, iters_per_epoch=6, warmup_iters=2, batch_size=32,
                       cls_batch_size=64, out=str(tmp_path)))
    assert cfg.l2 == 0.0 and cfg.p0 == "gaussian"
    tr = Trainer(cfg, *digits)
    assert tr.model.energy_head is None and tr.model.class_head is not None
    assert tr.cls_batches is not None and not tr.gen_batches.augment
    x = to_float(digits[0].images[:4])
    e, logits = tr.model(x)
    assert torch.equal(e, -torch.logsumexp(logits, 1))
    tr.fit()
    with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
        recs = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert len(recs) == 6
    assert all(torch.isfinite(torch.tensor([r["e_pos"], r["e_neg"], r["loss"], r["loss_cls"]])).all()
               for r in recs)
    assert any(r["loss_cls"] > 0 for r in recs)


def test_auto_leaves_the_compiled_step_off_under_ddp():
    """On CUDA ``auto`` turns every fast component on, but the compiled step is single-process: under torchrun
    ``auto`` must leave it off (completion.check_world_size refuses an explicit --compile-step there), or every default
    multi-GPU run would stop at start."""
    from fastebm.run.completion import check_world_size, for_device

    for world, expected in ((1, True), (2, False)):
        cfg = for_device(resolve(dict(dataset="cifar10", data_root="x")), "cuda", world)
        assert cfg.compile_step is expected and cfg.triton and cfg.cuda_graphs and cfg.compile == "default"
        assert cfg.amp == "bf16" and cfg.sgld_amp == "off"  # bf16 loss pass, fp32 SGLD (docs/fastpath.md)
    cfg = for_device(resolve(dict(dataset="cifar10", data_root="x", compile_step=True)), "cuda", 2)
    assert cfg.compile_step  # explicit: kept, and refused with a one-line error
    with pytest.raises(ValueError, match="^--compile-step: not supported with DDP"):
        check_world_size(cfg, 2)
    base = resolve(dict(dataset="cifar10", data_root="x"))
    assert for_device(base, "cpu") != base and base.compile == "auto"  # a new Config; the resolved one is kept


def test_an_epoch_is_the_authors_loader_pass():
    from fastebm.config.options import derive_iters_per_epoch

    assert derive_iters_per_epoch(resolve(dict(dataset="cifar10")), 50_000) == 390  # labelled loader, 128
    assert derive_iters_per_epoch(resolve(dict(dataset="celebahq128")), 30_000) == 468  # train_maebm_celeba.py, 64
    assert derive_iters_per_epoch(resolve(dict(dataset="cifar10", model="jem")), 50_000) == 703  # JEM's p(x) loader
    assert derive_iters_per_epoch(resolve(dict(dataset="cifar10", model="jempp")), 50_000) == 703  # JEM++'s too


def _completed(over: dict, world_size: int = 1, n_train: int = 1000, image_size: int = 16):
    """(resolved, completed) on the CPU for ``n_train`` images of ``image_size`` px and 10 classes."""
    from fastebm.run.completion import complete

    cfg = resolve(over)
    return cfg, complete(cfg, "cpu", world_size, n_train, image_size, 10)


@pytest.mark.parametrize("over, world_size", [
    (dict(dataset="digits", model="mebm", image_size=16), 1),
    (dict(dataset="digits", model="mjem", image_size=16, fid_every=1, random_inception=True), 1),
    (dict(dataset="digits", model="mjem", image_size=16, iters_per_epoch=NONE), 2),  # DDP: 2 ranks
])
def test_a_completed_config_completed_again_is_unchanged(over, world_size, tmp_path, monkeypatch):
    from fastebm.run.completion import complete

    monkeypatch.chdir(tmp_path)  # the default run folder is looked for here
    _, done = _completed(over, world_size)
    assert done.out and done.iters_per_epoch and done.compile == "off" and done.check_every == 1
    assert complete(done, "cpu", world_size, 1000, 16, 10) == done


def test_complete_fills_in_what_the_device_and_the_data_decide(tmp_path, monkeypatch):
    """Values computed here from the rules: on the CPU the fast path is off, the host check runs every
    iteration and the FID is off; an M-EBM epoch is n // cls_batch_size (1000 // 64 = 15), the warm-up at most
    a fifth of the run (min(50, 2 · 15 // 5 = 6)); the run folder runs/<dataset>-<model>-k<K>."""
    monkeypatch.chdir(tmp_path)
    cfg, done = _completed(dict(dataset="digits", model="mebm", image_size=16, iters_per_epoch=NONE, epochs=2))
    assert (cfg.batch_size, cfg.cls_batch_size, cfg.warmup_iters, cfg.iters_per_epoch) == (32, 64, 50, None)
    want = dict(compile="off", cuda_graphs=False, amp="off", sgld_amp="off", triton=False, channels_last=False,
                compile_step=False, check_every=1, fid_every=0, iters_per_epoch=15, warmup_iters=6,
                out=os.path.join("runs", "digits-mebm-k5"))
    assert {k: v for k, v in done.to_dict().items() if cfg.to_dict()[k] != v} == want
    assert (done.image_size, done.n_classes, done.total_iters) == (16, 10, 30)
    # JEM on a folder of 10,000 images, 2 ranks: (10,000 − 5,000 held out) // 64 = 78 per epoch, 200 epochs, so the
    # recipe's warm-up of 1,000 stays (78 · 200 // 5 = 3,120); an explicit FID cadence and run folder are kept
    over = dict(dataset="folder", data_root="x", model="jem", fid_every=1, random_inception=True, out="o")
    cfg, done = _completed(over, world_size=2, n_train=10_000, image_size=32)
    want = dict(compile="off", cuda_graphs=False, amp="off", sgld_amp="off", triton=False, channels_last=False,
                compile_step=False, check_every=1, image_size=32, iters_per_epoch=78)
    assert {k: v for k, v in done.to_dict().items() if cfg.to_dict()[k] != v} == want
    assert (done.warmup_iters, done.fid_every, done.out, done.n_classes) == (1000, 1, "o", 10)


def test_complete_checks_the_options_against_the_ranks():
    for over, world, message in (
            (dict(batch_size=30), 4, "--batch-size 30: the global batch must be divisible by the number of ranks (4)"),
            (dict(buffer_size=1), 2, "--buffer-size 1: expected at least one sample per rank (2)"),
            (dict(compile_step=True), 2, "--compile-step: not supported with DDP (torchrun); pass --no-compile-step")):
        with pytest.raises(ValueError) as e:
            _completed(dict(dataset="digits", image_size=16, out="o", **over), world)
        assert str(e.value) == message


def test_a_command_resolves_its_config_once(tmp_path, monkeypatch, capsys):
    """The help's preset view is resolved only for the help; --resume auto that starts reuses its resolution."""
    import fastebm.train as T

    calls = []
    monkeypatch.setattr(T, "resolve", lambda over: calls.append(over) or resolve(over))
    for extra in ([], ["--resume", "auto"]):
        calls.clear()
        assert main(["--dataset", "digits", "--out", str(tmp_path / "run"), "--print-config", *extra]) == 0
        assert len(calls) == 1 and json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "run")
    assert "(default: 0.05)" in " ".join(T.build_parser(["--dataset", "digits"]).format_help().split())
