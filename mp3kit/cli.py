"""The mp3kit command line: data, train, runs, submit, explain, bench, report."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from mp3kit.config import PROFILES, Setting, TrainConfig, settings_of
from mp3kit.util import UserError


def _cmd_data_synth(args) -> int:
    from mp3kit import synth

    kw = {} if args.images is None else {"n_images": args.images}
    devkit = synth.make_synthetic_voc(args.root, seed=args.seed, progress=not args.quiet, **kw)
    print(f"Wrote a synthetic VOC 2007 tree (not real photographs) to {devkit}")
    return 0


def _cmd_data_fetch(args) -> int:
    from mp3kit import fetch

    devkit = fetch.fetch_voc(args.root, sources=args.source, default_sources=not args.no_default_sources,
                             progress=not args.quiet, timeout=args.timeout)
    print(f"PASCAL VOC 2007 is ready in {devkit / 'VOC2007'}, verified against the official labels")
    return 0


def _cmd_data_check(args) -> int:
    from mp3kit import data, verify

    report = data.check_tree(args.root)
    print(data.format_check(report))
    result = verify.verify_tree(args.root, progress=not args.quiet)
    print("\n" + verify.format_verification(result))
    return 0 if report["ok"] and (result.ok or result.synthetic) else 1


def config_from_args(args):
    """Fill a TrainConfig (or the subclass build_parser was given) from the flags given; the rest keep the defaults."""
    changes = {}
    for s in settings_of(args.config_class):
        value = getattr(args, s.name, None)
        if value is not None:
            changes[s.name] = s.parse(value) if s.parse else value
    return args.config_class(**changes)


def _cmd_train(args) -> int:
    from mp3kit import runs, train

    if args.name is not None:
        runs.check_name(args.name)  # before the data loads: a bad --name is refused at once
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds} is not a number of seeds: give a whole number of at least 1.")
    config = config_from_args(args)
    # Seeds seed, seed + 1, ...: each its own run, named NAME, then NAME-seed<seed> (without --name, each by its config).
    configs = [config.replace(seed=config.seed + i) for i in range(args.seeds)]
    names = (runs.seed_names(args.name, config.seed, args.seeds) if args.name is not None
             else [c.default_name() for c in configs])
    data = train.load_data(args.data_root, config.max_images)  # loaded once for every seed
    done, status, timing = [], 0, None
    for c, name in zip(configs, names):
        expected = None
        if not args.quiet:  # how long it will take, timed here, before the time is spent (and kept with the run)
            from mp3kit import estimate

            # The seeds' steps take as long as each other (estimate.timing_key leaves the seed out): timed once.
            expected = estimate.estimate_run(c, data, path=Path(args.runs_dir) / name, resume=args.resume, reuse=False,
                                             timing=timing)
            if expected.timing is not None:
                timing = expected.timing
                print(expected.line(name), flush=True)
        run = train.fit(c, args.data_root, name=name, runs_dir=args.runs_dir, resume=args.resume,
                        progress=not args.quiet, data=data, expected=expected.record() if expected and expected.timing else None)
        if run.moved_aside and args.quiet:  # with progress on, fit has said so
            print(f"{run.name}: the earlier run in {run.path} moved to {run.moved_aside} (kept, listed by mp3kit runs).")
        if run.status != "complete":
            print(f"Run {run.name} {run.status}: {run.reason}", file=sys.stderr)
            status = 1
            continue
        kind = " (synthetic data)" if run.synthetic else ""
        print(f"{run.name}: test mAP {run.test_map:.4f}, average test loss {run.test_loss:.4f}{kind} -> {run.path}")
        done.append(run)
    if len(done) > 1:
        spreads = []
        for what, field in (("val mAP", "val_map"), ("test mAP", "test_map")):
            mean, sd = runs.mean_and_std([v for r in done for v in runs.seed_values(r, field)])
            if sd is not None:  # a trainval run has no val mAP
                spreads.append(f"{what} {mean:.4f} ± {sd:.4f}")
        print(f"{len(done)} seeds ({', '.join(str(r.config['seed']) for r in done)}): {', '.join(spreads)} "
              "(mean ± standard deviation)")
    return status


def _cmd_lr_find(args) -> int:
    from mp3kit import plots, train

    config = config_from_args(args)
    found = train.lr_range_test(config, args.data_root, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr,
                                progress=not args.quiet)
    if args.plot:
        plots.plot_lr_find(found, path=args.plot, title=f"Learning-rate range test, {config.model_label()} with "
                                                        f"{config.optimizer}")
    print(train.suggestion_line(found, f"{config.model_label()} with {config.optimizer}")
          + (f"; plot: {args.plot}" if args.plot and found["suggested_lr"] is not None else ""))
    if found["suggested_lr"] is None:
        return 1
    return 0


def _cmd_runs(args) -> int:
    from mp3kit import layout, runs
    from mp3kit.table import Table

    if args.runs_dir is not None:
        folders = [Path(args.runs_dir)]
    else:  # the notebooks' runs folders, one per profile (mp3kit.layout), as `mp3kit report` finds them
        base = layout.runs_folder("quick").parent
        folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    shown = 0
    for folder in folders:
        found = runs.list_runs(folder)
        if not found:
            continue
        shown += len(found)
        rows = [[s["name"], models_label(r), s["status"], s["epochs_done"], s["val_map"], s["test_map"],
                 r.earlier_version_of or ""] for r, s in ((r, r.summary()) for r in found)]
        note = ("name@time: an earlier version of that name, moved aside (time in UTC) when the name was trained "
                "afresh; kept, and it loads like any run." if any(r.earlier_version_of for r in found) else "")
        print(f"{folder}:")
        print(Table(rows, ["name", "model", "status", "epochs", "val mAP", "test mAP", "earlier version of"], note,
                    align=["left", "left", "left", "right", "right", "right", "left"]).to_text() + "\n")
    if not shown:
        print(f"No runs in {args.runs_dir or ', '.join(map(str, folders)) or layout.runs_folder('quick').parent}.")
    return 0


def models_label(run) -> str:
    """Return the short name of a run's network (a model name, a spec's name, or a student's class name)."""
    from mp3kit import models

    return models.label(run.config.get("model"))


def _cmd_submit(args) -> int:
    from mp3kit import kaggle

    if args.check:
        problems = kaggle.check_kaggle_csv(args.check)
        if problems:
            for p in problems:
                print(p, file=sys.stderr)
            return 2
        print(f"{args.check} is a valid Kaggle submission; its score (1 - mAP) is {kaggle.kaggle_score(args.check):.5f}.")
        return 0
    if not args.run:
        raise UserError("mp3kit submit needs --check FILE or --run RUN_DIR: give one of them.")
    from mp3kit import runs

    run = runs.load_run(args.run)
    if not run.complete:
        raise UserError(f"The run {run.path} is {run.status}, with no test evaluation yet: resume it first (mp3kit "
                        f"train --resume).")
    out = Path(args.out or run.path / "kaggle.csv")
    count_difficult = not args.voc_convention
    kaggle.write_kaggle_csv(out, kaggle.kaggle_aps(run, count_difficult))
    print(f"Wrote {out}: Kaggle score (1 - mAP) {kaggle.kaggle_score(out):.5f}, {kaggle.convention(count_difficult)}"
          + (" (synthetic data)" if run.synthetic else ""))
    return 0


def _cmd_explain(args) -> int:
    from mp3kit import explain

    said = explain.write_explanations(args.run, args.out, args.data_root, cls=args.cls, n=args.images, layer=args.layer)
    for line in said:
        print(line, file=sys.stderr if line.startswith("No Grad-CAM") else sys.stdout)
    return 1 if said[-1].startswith("No Grad-CAM") else 0


def _cmd_bench(args) -> int:
    from mp3kit import bench

    bench.main(images=args.images, device=args.device, quick=args.quick)
    return 0


def _cmd_report(args) -> int:
    from mp3kit import report

    return report.main(profile=args.profile, data_root=args.data_root, only=args.only, report_dir=args.report_dir,
                       execute=not args.no_execute, runs_dir=args.runs_dir, notebooks_dir=args.notebooks_dir,
                       settings_given=args.set)


def _add_config_flags(t, config_class) -> None:
    """Add a flag for every setting of config_class (train and lr-find share them); config_from_args reads them."""
    t.add_argument("--data-root", default=None, help="VOC tree (default: the embedded synthetic dataset)")
    for s in settings_of(config_class):
        t.add_argument(s.flag, dest=s.name, default=None, help=_help(s).replace("%", "%%"), **_flag_options(s))
    t.set_defaults(config_class=config_class)


def _flag_options(s: Setting) -> dict:
    """Return how argparse reads a setting: a choice, a switch, a number, a tuple's numbers, or text."""
    if s.choices:
        return dict(choices=s.choices, metavar="NAME")
    if s.kind is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if s.kind is tuple:
        return dict(nargs=len(s.items), type=s.items[0])
    return dict(type=s.kind) if s.kind in (int, float) else {}


def _help(s: Setting) -> str:
    """Return a flag's help: the setting's, its choices and its default."""
    notes = [f"one of {', '.join(s.choices)}"] if s.choices else []
    if isinstance(s.default, bool):
        notes.append(f"default {'on' if s.default else 'off'}")
    elif s.default is not None:
        notes.append(f"default {' '.join(map(str, s.default)) if isinstance(s.default, tuple) else s.default}")
    return f"{s.help} ({'; '.join(notes)})" if notes else s.help


def build_parser(config_class=TrainConfig) -> argparse.ArgumentParser:
    """Build the argparse parser for every subcommand; train and lr-find get a flag for each of config_class's fields."""
    p = argparse.ArgumentParser(prog="mp3kit", description="Multi-label classification on PASCAL VOC 2007, for coursework.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="get, make or check a VOC 2007 tree")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = dsub.add_parser("synth", help="write the embedded synthetic dataset in the real VOC layout")
    s.add_argument("--root", required=True, help="folder to write VOCdevkit/VOC2007 into")
    s.add_argument("--images", type=int, default=None, help="number of images (default: the kit's size)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_data_synth)
    f = dsub.add_parser("fetch", help="download VOC 2007 (about 900 MB) from the first source that gives exactly "
                                      "the official data, and put it in place verified")
    f.add_argument("--root", required=True, help="folder that will hold VOCdevkit/VOC2007")
    f.add_argument("--source", action="append", default=[], metavar="URL_OR_FOLDER",
                   help="a base URL or a folder holding VOCtrainval_06-Nov-2007 and VOCtest_06-Nov-2007 (.tar or "
                        ".zip); tried before the built-in sources; repeatable")
    f.add_argument("--no-default-sources", action="store_true", help="try only the --source ones")
    f.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up on a source that sends nothing for this long (default 30)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=_cmd_data_fetch)
    c = dsub.add_parser("check", help="report the splits, images and labels under a VOC tree, and whether they "
                                      "are exactly the official VOC 2007")
    c.add_argument("--root", required=True)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_data_check)

    t = sub.add_parser("train", help="train one run and record it under the runs folder")
    t.add_argument("--name", default=None, help="run name (default: model plus a hash of the config)")
    t.add_argument("--runs-dir", default="runs")
    _add_config_flags(t, config_class)
    t.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train the same config with N seeds (--seed, --seed + 1, ...), each its own run: NAME, then "
                        "NAME-seed<seed>; prints the mean ± standard deviation (default 1)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    lf = sub.add_parser("lr-find", help="learning-rate range test: the loss while the lr rises, and the lrs where it "
                                        "falls fastest (trains a throwaway copy; records nothing)")
    _add_config_flags(lf, config_class)
    lf.add_argument("--steps", type=int, default=200, help="batches to train (default 200)")
    lf.add_argument("--start-lr", type=float, default=1e-6)
    lf.add_argument("--end-lr", type=float, default=1.0)
    lf.add_argument("--plot", metavar="FILE.png", help="also save the loss-against-lr plot there")
    lf.add_argument("--quiet", action="store_true")
    lf.set_defaults(func=_cmd_lr_find)

    r = sub.add_parser("runs", help="list the recorded runs, their network, val and test mAP, and earlier versions")
    r.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="a runs folder (default: every profile's runs folder of the notebooks here, runs/PROFILE)")
    r.set_defaults(func=_cmd_runs)

    k = sub.add_parser("submit", help="write or check the Kaggle CSV (id,category = 1 - AP per class)")
    k.add_argument("--check", metavar="FILE", help="validate a Kaggle CSV")
    k.add_argument("--run", metavar="RUN_DIR", help="write the Kaggle CSV of a complete run")
    k.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/kaggle.csv)")
    k.add_argument("--voc-convention", action="store_true",
                   help="leave difficult-only labels out of each class's AP (the VOC convention of mp3kit's test mAP); "
                        "default: count them as positives, the course's convention, as its kit and leaderboard do")
    k.set_defaults(func=_cmd_submit)

    x = sub.add_parser("explain", help="why a run scores what it scores: its predictions on val images, the classes its "
                                       "false positives come with, and Grad-CAM maps of where it looks")
    x.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run's folder")
    x.add_argument("--out", metavar="DIR", help="where the PNGs and context.md go (default: RUN_DIR/explain)")
    x.add_argument("--data-root", default=None, help="the VOC tree the run was trained on (default: the one it recorded)")
    x.add_argument("--class", dest="cls", default=None, metavar="NAME",
                   help="the class Grad-CAM explains (default: the class most val images hold)")
    x.add_argument("--images", type=int, default=6, help="val images in the predictions figure (default 6; Grad-CAM "
                                                         "shows up to 4)")
    x.add_argument("--layer", default=None, help="the layer Grad-CAM explains (default: the last convolution a forward "
                                                 "pass runs)")
    x.set_defaults(func=_cmd_explain)

    b = sub.add_parser("bench", help="measure the input pipeline and training throughput")
    b.add_argument("--images", type=int, default=None)
    b.add_argument("--device", default="auto")
    b.add_argument("--quick", action="store_true", help="fewer images, for a check in seconds")
    b.set_defaults(func=_cmd_bench)

    rep = sub.add_parser("report", help="run your notebooks with papermill and rebuild report/ from their runs")
    rep.add_argument("--profile", choices=tuple(PROFILES), default="quick", metavar="NAME",
                     help="one of %(choices)s (default %(default)s)")
    rep.add_argument("--data-root", default=None, help="VOC tree (default: the embedded synthetic dataset)")
    rep.add_argument("--only", default=None, help="run one notebook (e.g. 01_introduction)")
    rep.add_argument("--notebooks-dir", default=None, metavar="DIR",
                     help="the notebooks to run (default: ./notebooks, else the current folder, whichever holds them)")
    rep.add_argument("--runs-dir", default=None, metavar="DIR",
                     help="this profile's runs folder (default: the one the notebooks use, runs/PROFILE in the folder "
                          "holding them, or holding notebooks/ as a checkout does)")
    rep.add_argument("--report-dir", default=None, metavar="DIR",
                     help="where the report goes (default: report/ beside runs/)")
    rep.add_argument("--no-execute", action="store_true",
                     help="run no notebook: rebuild report.md/html from the runs and figures already in the runs "
                          "folder (seconds; needs no notebook and no checkout)")
    rep.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="give the notebooks' first cell another value, e.g. --set WORKED_EXAMPLE=True (repeatable)")
    rep.set_defaults(func=_cmd_report)
    return p


def _file_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types besides OSError that a user's file can raise past the checks that name the file.

    Looked up in sys.modules, not imported: a module never imported raised none, and --help stays quick.
    """
    names = (("builtins", "UnicodeDecodeError"), ("builtins", "EOFError"), ("json", "JSONDecodeError"),
             ("zipfile", "BadZipFile"), ("tarfile", "TarError"), ("zlib", "error"), ("pickle", "UnpicklingError"),
             ("xml.etree.ElementTree", "ParseError"), ("PIL.Image", "DecompressionBombError"))
    return tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)


def main(argv=None) -> int:
    """Run the mp3kit command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"mp3kit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM while training; the message, if any, says where the run stands
        print(f"mp3kit: {exc}" if str(exc) else "mp3kit: interrupted.", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except Exception as exc:
        if args.debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        if isinstance(exc, OSError) and exc.errno is not None:
            print(f"mp3kit: {exc.strerror or exc}{where}: check the path, free space and permissions.", file=sys.stderr)
            return 1
        if not isinstance(exc, (OSError, *_file_errors())):
            raise  # a bug, not a file: the traceback is what a report needs
        # A file's content that no check anticipated (an OSError without errno is PIL's or gzip's "not this format").
        command = shlex.join(["mp3kit", "--debug", *(sys.argv[1:] if argv is None else argv)])
        detail = (str(exc).splitlines() or [""])[0]
        print(f"mp3kit: a file could not be read{where} ({type(exc).__name__}: {detail}): check or replace it "
              f"(`{command}` shows which file).", file=sys.stderr)
        return 2
