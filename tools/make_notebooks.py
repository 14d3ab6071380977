"""Build the three course notebooks from the cell texts below, so that they are deterministic and reviewable.

    python tools/make_notebooks.py            # write notebooks/01..03 with no outputs
    python tools/make_notebooks.py --execute  # also run them in the smoke profile and keep the outputs of the
                                              # cells marked # NBVAL_CHECK_OUTPUT (the ones nbval compares)

Run it with --execute after changing a text here, the synthetic dataset or a model's layers. Only the
checked cells keep their outputs; everything else is stripped so the committed notebooks stay small.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from textwrap import dedent

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REPO_URL = "https://github.com/mp3kit/mp3kit"  # where Colab installs mp3kit from; the parameters cell can change it
CHECK = "# NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

sys.path.insert(0, str(ROOT))
from mp3kit.experiment import PROFILES  # noqa: E402  (the profile table is written from the real settings)


def md(*parts: str) -> dict:
    """Return a markdown cell made of parts, each dedented, separated by blank lines."""
    return nbformat.v4.new_markdown_cell("\n\n".join(dedent(part).strip() for part in parts))


def code(text: str, *tags: str) -> dict:
    """Return a code cell (its text dedented) with tags."""
    cell = nbformat.v4.new_code_cell(dedent(text).strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def parameters(title: str, extra: str) -> dict:
    """Return the papermill parameters cell: the common settings, then the notebook's own."""
    common = dedent(f'''
        # {title}
        # Parameters: edit them here, or let papermill / `mp3kit report` set them (this cell is tagged "parameters").
        import os

        PROFILE = os.environ.get("MP3KIT_PROFILE", "quick")  # smoke (seconds, for tests) | quick (synthetic data, CPU minutes) | full (the course settings, real VOC)
        DATA_ROOT = None  # folder holding VOC 2007, e.g. "data/voc" (`mp3kit data fetch --root data/voc`); None: the embedded synthetic dataset
        RUNS_DIR = os.environ.get("MP3KIT_RUNS_DIR", "runs")  # every run is recorded here, and reused when a cell runs again
        FIGURES_DIR = os.environ.get("MP3KIT_FIGURES_DIR", "figures")  # every figure is saved here as a PNG
        RETRAIN = False  # True: train every run again even when a finished one with the same settings is on disk
        REPO_URL = "{REPO_URL}"  # Colab installs mp3kit from here: a git URL, or the path of an uploaded wheel
    ''').strip()
    return code(common + "\n" + dedent(extra).strip(), "parameters")


COLAB = dedent('''
    # Colab set-up; does nothing outside Colab (in JupyterLab, `pip install -e .` or `make setup` did it already).
    # It installs mp3kit without replacing Colab's own torch, torchvision and ipywidgets, turns on the widget
    # manager the training panel needs, and for PROFILE "full" downloads VOC 2007 (~900 MB) to /content/voc.
    import sys

    if "google.colab" in sys.modules:
        import subprocess
        import tempfile
        from importlib.metadata import version
        from pathlib import Path

        pins = Path(tempfile.gettempdir()) / "colab-pins.txt"  # pip may add what is missing but must keep these builds
        pins.write_text("".join(f"{p}=={version(p)}\\n" for p in ("torch", "torchvision", "ipywidgets")))
        # A git URL, a git+... spec, or the path of an uploaded mp3kit wheel or source folder.
        source = REPO_URL if REPO_URL.startswith(("git+", "/", ".")) or REPO_URL.endswith(".whl") else f"git+{REPO_URL}"
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", str(pins), source],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            why = (pip.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise SystemExit(f"Installing mp3kit from REPO_URL = {REPO_URL!r} failed ({why}): set REPO_URL in the "
                             "first cell to your course's mp3kit repository, or upload mp3kit's wheel and give its path.")
        from google.colab import output

        output.enable_custom_widget_manager()
        if PROFILE == "full":
            DATA_ROOT = DATA_ROOT or "/content/voc"
            subprocess.run([sys.executable, "-m", "mp3kit", "data", "fetch", "--root", DATA_ROOT], check=True)
''').strip()


def colab(extra: str = "") -> dict:
    """Return the Colab set-up cell (a no-op anywhere else), with extra lines run on Colab only."""
    lines = [f"    {line}" if line else "" for line in dedent(extra).strip().splitlines()]
    return code("\n".join([COLAB, *([""] if lines else []), *lines]))


def profile_table() -> str:
    """Return the markdown table of the profiles, from mp3kit.experiment.PROFILES."""
    rows = "\n".join(f"| `{p.name}` | {p.about} |" for p in PROFILES.values())
    return "| profile | what it runs |\n|---|---|\n" + rows


PROFILE_NOTE = f"""
**Profiles.** `PROFILE` in the first cell sets how big every experiment is:

{profile_table()}

The *synthetic* dataset is mp3kit's stand-in for VOC: generated shapes, one look per class, in the
real VOC folder layout and with VOC's class frequencies and co-occurrences. It lets every cell run
anywhere in minutes, but its numbers say nothing about photographs: everything trained on it is
labelled *synthetic*. For your report, use `full` on real VOC 2007 with a GPU (in Colab:
Runtime → Change runtime type → GPU).
"""

PANEL = """
## Try your own settings: the training panel

The panel below fills the same `TrainConfig` as the cells above. Pick a model, optimizer, learning
rate (log scale), epochs, batch size, augmentation and evaluation frequency, then click **Train**:
the loss and mAP curves update after every epoch and the table lists every run so far with its test
mAP. **Stop** ends the run after the current batch and keeps its last finished epoch; **Resume**
continues it. Training runs in the background, so the notebook stays usable.

Panel runs are recorded under `RUNS_DIR` like every other run (named `panel-1-simple`, ...), so
`plots.plot_history(f"{RUNS_DIR}/panel-1-simple")` plots one again. In Colab the first cell has already
turned on the widget manager; in JupyterLab nothing else is needed. (Under papermill and nbval the
panel is drawn and the notebook goes on.)
"""


# ---------------------------------------------------------------------------------------------- notebook 1

def notebook_01() -> list:
    """Return the cells of 01_introduction."""
    return [
        parameters("mp3kit · Notebook 1: introduction to multi-label classification on PASCAL VOC 2007", """
            LOWER_LEARNING_RATES = [0.001, 0.0001]  # compared with the course's SGD learning rate 0.01
            ADAM_LR = 1e-4  # the seed report's Adam: lr 1e-4, betas (0.9, 0.999), eps 1e-8
        """),
        colab(),
        md("""
            # 1 · Introduction: the data, a simple classifier, and its hyperparameters

            In this notebook you

            1. look at PASCAL VOC 2007: images and their boxes, how often each class appears, which classes
               appear together;
            2. train the course's simple classifier with the course's defaults and read its loss and mAP curves;
            3. repeat the seed report's hyperparameter study: three learning rates, longer training, Adam.

            A code cell here is one to three lines that call `mp3kit`; the text around it says what to look
            for. Every run is recorded on disk under `RUNS_DIR` (its settings, a history per epoch, the test
            scores and a checkpoint). Running a cell again **reuses** a finished run with the same settings
            instead of training it again, and **resumes** one that was interrupted, so a restarted kernel or a
            lost Colab session costs you nothing finished. (In Colab, `RUNS_DIR` on your mounted Google Drive
            keeps runs across sessions.)
        """, PROFILE_NOTE),
        code("""
            from mp3kit import plots
            from mp3kit.experiment import Experiment
        """),
        code("""
            exp = Experiment("01_introduction", PROFILE, DATA_ROOT, RUNS_DIR, FIGURES_DIR, retrain=RETRAIN)
        """),
        md("""
            ## The data

            VOC 2007 has 9,963 photographs split into *train* (2,501), *val* (2,510) and *test* (4,952), with
            20 object classes. An image often holds several classes (a person on a horse, a chair by a dining
            table), so this is **multi-label** classification: the network gives 20 independent scores, each
            turned into a probability by its own sigmoid, and no softmax makes the classes compete.

            Every object is annotated with a box; objects that are tiny or mostly hidden are marked
            *difficult*. Training here uses only which classes are present, not where, but drawing the boxes
            shows what a label means. Look at how many classes an image holds, how small some objects are,
            and the dashed (difficult) boxes.
        """),
        code("""
            plots.show_images_with_boxes(exp.data.train, n=6, path=exp.figure("data-boxes"))
        """),
        md("""
            How many images of each class are there? The table counts *images* that contain the class (an
            image with three cars counts once) in each split this profile uses; the figure draws the train
            counts as bars (pale: images where the class appears only as difficult objects) and, on the
            right, how many train images hold each pair of classes.
        """),
        code(f"""
            {CHECK}
            exp.data_table()
        """),
        code("""
            plots.plot_label_stats(exp.data.train, path=exp.figure("label-stats"))
        """),
        md("""
            Two things to take from these counts.

            **The classes are very unbalanced.** In real VOC, *person* is in about 40% of the images and
            *sheep* in about 2%. A classifier that answers "absent" for everything gets over 90% of its
            yes/no answers right while being useless, so accuracy is not the measure. For each class,
            **average precision (AP)** ranks the test images by the classifier's score for that class and
            averages the precision at the rank of every image that does contain it: a perfect ranking gets
            1.0, a random one gets about the fraction of images that contain the class. **mAP** is the mean
            AP over the 20 classes, so a rare class counts as much as *person*. As in the official VOC
            evaluation, an image where a class appears only as difficult objects is left out of that class's
            AP.

            **Classes come together.** Chairs appear with dining tables, people with horses, bicycles and
            motorbikes. A network can learn such context, and it can also lean on it: expect it to "see" a
            chair where there is only a table.
        """),
        md("""
            ## The simple classifier, with the course's defaults

            The course's simple classifier has three convolution layers (5×5, 3×3, 3×3), each followed by a
            ReLU and a 2×2 max-pool, then three fully connected layers (120, 84 and 20 units). The table
            lists every layer with its output shape and number of parameters at this profile's image size
            (at 227 px the first fully connected layer alone holds about 1.3 million of them).
        """),
        code(f"""
            {CHECK}
            exp.architecture("simple")
        """),
        md("""
            Training uses the course's defaults: SGD with learning rate 0.01 and momentum 0.9, batches of 50,
            20 epochs, and the loss is the binary cross-entropy of each class's sigmoid averaged over the 20
            classes (PyTorch's `MultiLabelSoftMarginLoss` computes the same number). The model trains on
            *train*; train and val mAP are measured at the first epoch, every 5th and the last (the kit's
            `test_frequency`), and the test split is scored once, at the end. `exp.config(...)` returns
            these defaults with the profile's sizes and your changes applied; `print(exp.config())` shows
            every field.
        """),
        code("""
            default = exp.run("simple-default", exp.config(model="simple"), label="simple, SGD lr 0.01 (course defaults)")
        """),
        md("""
            **Report 1a.** The line above gives the test mAP and the average test loss (the mean binary
            cross-entropy over every test image and class). They are stored in the run's `metrics.json`, and
            the report takes them from there, so no number needs copying by hand.

            **Report 1b: reading the curves.** The *Loss Plot* shows the training loss of every epoch (solid) and the
            validation loss at the evaluation epochs (dashed); the *mAP Plot* shows train and val mAP at those
            epochs. Is the training loss still falling at the end (more epochs would help)? Does the
            validation loss turn upwards while the training loss keeps falling (overfitting)? How far apart
            are train and val mAP? Note where the loss starts: about 0.69 (ln 2, a probability of 0.5 for
            every class). It drops fast simply because most labels are 0, so "mostly absent" is a cheap
            first lesson: a low loss does not mean a good ranking, which is why we also watch mAP.

            The table printed with every run has a *chance* line: the mAP of a network that gives every
            image the same scores. A run near it has learned nothing yet. With SGD at 0.01 this network sits
            near chance for its first few hundred steps while its small initial weights grow, and then its mAP
            starts to climb (on the synthetic data of the `quick` profile, after about 10 of its 15 epochs).
        """),
        code("""
            plots.plot_history(default, path=exp.figure("simple-default-curves"))
        """),
        md("""
            Test AP per class: which classes does the network rank well, and are the worst ones the rare
            classes from the counts above, or classes that look like others?
        """),
        code("""
            plots.plot_per_class_ap(default, path=exp.figure("simple-per-class-ap"))
        """),
        md("""
            ## The seed report's hyperparameter study

            **Learning rate.** Everything as before except the learning rate: 0.001 and 0.0001 against the
            course's 0.01. With momentum 0.9, while the gradient keeps its direction, each step moves about
            ten times the learning rate times the gradient. Too small a rate, and 20 epochs are not enough to
            get anywhere; too large, and the loss jumps around or the run diverges (mp3kit stops a run whose
            loss becomes NaN and says so).
        """),
        code("""
            lr_runs = [default]
            for lr in LOWER_LEARNING_RATES:
                lr_runs.append(exp.run(f"simple-lr{lr:g}", exp.config(model="simple", lr=lr), label=f"simple, SGD lr {lr:g}"))
        """),
        code("""
            plots.plot_history(exp.labelled(*lr_runs), path=exp.figure("lr-study-curves"))
        """),
        md("""
            **Longer training.** The seed report doubled the epochs (40 instead of 20) with SGD 0.01. Look at
            the validation curves in the second half: still improving, flat, or getting worse?
        """),
        code("""
            long = exp.run("simple-long", exp.config(model="simple", epochs=exp.long_epochs),
                           label=f"simple, SGD lr 0.01, {exp.long_epochs} epochs")
            plots.plot_history(long, path=exp.figure("simple-long-curves"))
        """),
        md("""
            **Adam.** Adam scales each parameter's step by a running estimate of its gradient's size, so one
            learning rate suits layers whose gradients differ by orders of magnitude. The seed report used
            lr 1e-4, betas (0.9, 0.999) and eps 1e-8 (the defaults of `TrainConfig`).
        """),
        code("""
            adam = exp.run("simple-adam", exp.config(model="simple", optimizer="adam", lr=ADAM_LR),
                           label=f"simple, Adam lr {ADAM_LR:g}")
            plots.plot_history(adam, path=exp.figure("simple-adam-curves"))
        """),
        md("""
            Every run of this notebook side by side. "best val mAP" is the best evaluation epoch on *val*;
            the test split is scored once, after the last epoch, and is never used to choose anything.
        """),
        code("""
            exp.table()
        """),
        md("""
            ### Report 1c: your analysis (at least 3 sentences)

            Use the curves and the table above; some questions to start from:

            - Which learning rate worked best within the epoch budget, and what do the curves of the other
              two show: too slow, or unstable?
            - Did doubling the epochs help? Point at the part of the curve that tells you whether even more
              epochs would.
            - What did Adam change compared with SGD at 0.01: how fast the loss falls, the final mAP, the
              gap between train and val?
            - Which classes are hardest for this network, and why might they be (how many examples, which
              classes they are confused with)?

            *Your analysis here.*
        """),
        md(PANEL),
        code("""
            from mp3kit.widgets import TrainPanel

            TrainPanel(exp)
        """),
    ]


# ---------------------------------------------------------------------------------------------- notebook 2

def notebook_02() -> list:
    """Return the cells of 02_scratch_vs_pretrained."""
    return [
        parameters("mp3kit · Notebook 2: AlexNet from scratch and ImageNet-pretrained", """
            ADAM_LR = 1e-4  # Adam for AlexNet from scratch, as suggested by the course kit
        """),
        colab("""
            import torchvision

            # The ImageNet AlexNet weights (233 MB) go to torch's hub cache, where mp3kit looks for them.
            torchvision.models.AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        """),
        md("""
            # 2 · AlexNet from scratch, and pretrained on ImageNet

            AlexNet (Krizhevsky, Sutskever and Hinton, 2012) won ImageNet 2012 and started the deep-learning
            era of computer vision. Here you train it twice on VOC: once **from scratch** (random weights),
            with three recipes, and once starting from weights **pretrained on ImageNet** (1.2 million
            images of 1,000 classes), replacing only its last layer. The difference between the two is
            what *transfer learning* buys.

            The runs use torchvision's AlexNet with a 20-class last layer. Everything you train is recorded
            under `RUNS_DIR` and reused when a cell runs again (see notebook 1).
        """, PROFILE_NOTE),
        code("""
            from mp3kit import plots
            from mp3kit.experiment import Experiment
        """),
        code("""
            exp = Experiment("02_scratch_vs_pretrained", PROFILE, DATA_ROOT, RUNS_DIR, FIGURES_DIR, retrain=RETRAIN)
        """),
        md("""
            ## The network

            Five convolution layers (the first 11×11 with stride 4), three max-pools, an adaptive average
            pool to 6×6, and three fully connected layers with dropout. Count where the parameters are: the
            convolutions hold a few million, the fully connected layers over 50 million. That is a lot to
            learn from 2,501 training images, which is the heart of this notebook.
        """),
        code(f"""
            {CHECK}
            exp.architecture("alexnet")
        """),
        md("""
            ## From scratch, three recipes

            1. **Course SGD**: the course's defaults (SGD, lr 0.01, momentum 0.9), as in notebook 1.
            2. **Tuned SGD**: the setting that did best in the seed report's study of the simple classifier,
               SGD 0.01 with longer training (40 epochs in the full profile).
            3. **Adam** with lr 1e-4, the alternative the course kit suggests for AlexNet.

            Training a network this size from scratch is slow to get going: watch whether the mAP moves at all
            in the first epochs, and how each recipe's loss behaves. The course's own figures on real VOC:
            0.106 test mAP with the course SGD, 0.150 with the longer SGD run and 0.272 with Adam, against about
            0.07 for chance. In the `quick` profile a CPU affords each run only about 60 steps of this
            57-million-parameter network, so expect all three to stay near chance there; the BatchNorm
            networks of notebook 3 climb within the same budget, which is one thing BatchNorm buys.
        """),
        code("""
            scratch_sgd = exp.run("alexnet-scratch-sgd", exp.config(model="alexnet"), label="AlexNet from scratch, SGD lr 0.01")
            plots.plot_history(scratch_sgd, path=exp.figure("alexnet-scratch-sgd-curves"))
        """),
        code("""
            scratch_tuned = exp.run("alexnet-scratch-tuned", exp.config(model="alexnet", epochs=exp.long_epochs),
                                    label=f"AlexNet from scratch, SGD lr 0.01, {exp.long_epochs} epochs")
            plots.plot_history(scratch_tuned, path=exp.figure("alexnet-scratch-tuned-curves"))
        """),
        code("""
            scratch_adam = exp.run("alexnet-scratch-adam", exp.config(model="alexnet", optimizer="adam", lr=ADAM_LR),
                                   label=f"AlexNet from scratch, Adam lr {ADAM_LR:g}")
            plots.plot_history(scratch_adam, path=exp.figure("alexnet-scratch-adam-curves"))
        """),
        md("""
            ## Pretrained on ImageNet

            Same network, same course SGD recipe, but every layer except the last starts from ImageNet
            weights. mp3kit never downloads them behind your back: it looks in `$MP3KIT_ALEXNET_WEIGHTS`,
            then in torch's hub cache (the Colab cell of this notebook puts them there). If they cannot be
            found, the cell below says where to put them and the notebook goes on without this run; the
            report then says the pretrained result is missing instead of showing a number.
        """),
        code("""
            missing = exp.check_pretrained()  # None when the ImageNet weights can be loaded
        """),
        code("""
            if missing is None:
                pretrained = exp.run("alexnet-pretrained", exp.config(model="alexnet-pretrained"),
                                     label="AlexNet pretrained on ImageNet, SGD lr 0.01")
                plots.plot_history(pretrained, path=exp.figure("alexnet-pretrained-curves"))
        """),
        md("""
            ## Side by side

            The curves of the course-SGD and Adam runs from scratch and of the pretrained run (when there is
            one) on the same axes, then test AP per class. Look at the first epoch: where does each run
            *start*? And per class: does pretraining help every class by about the same amount, or some far
            more than others?
        """),
        code("""
            compared = exp.labelled("alexnet-scratch-sgd", "alexnet-scratch-adam", "alexnet-pretrained")
            plots.plot_history(compared, path=exp.figure("scratch-vs-pretrained-curves"))
        """),
        code("""
            plots.plot_per_class_ap(compared, path=exp.figure("scratch-vs-pretrained-per-class"))
        """),
        code("""
            exp.table()
        """),
        md("""
            ### What transfer learning changed

            A network trained on ImageNet has already learned, in its first layers, detectors of edges,
            colour blobs and textures, and in its later layers, of parts and whole objects, many of them
            VOC's own classes (ImageNet has over a hundred dog breeds, and cars, boats and birds). Fine-tuning starts
            from those features, so the 2,501 VOC training images only have to teach the last layer which
            feature combinations mean which class, and to adjust the rest a little. From scratch, the same
            images must teach the whole 57-million-parameter network everything. The published reference:
            pretrained AlexNet fine-tuned on VOC 2007 reaches about 0.78–0.80 mAP; from scratch, even with
            careful initialisation, about 0.53–0.57, and far less with the course's 20 epochs.

            ### Report 2 and 3: your analysis

            - **2a/3a.** Test mAP and average test loss of each run: in the table above and in the report.
            - **3c. Differences from training from scratch (at least 3 sentences).** Compare the first
              epoch's mAP, how fast the training loss falls, the gap between train and val mAP, and which
              classes gained most from pretraining. Why would those classes gain most?
            - Which from-scratch recipe worked best, and why might Adam suit a network this size better than
              SGD at 0.01?

            *Your analysis here.*
        """),
    ]


# ---------------------------------------------------------------------------------------------- notebook 3

def notebook_03() -> list:
    """Return the cells of 03_develop_classifier."""
    return [
        parameters("mp3kit · Notebook 3: develop your own classifier, the ablation table and the Kaggle CSV", """
            ADAM_LR = 1e-4  # the recipe the seed report's ablation used from its second row on
            AUGMENT = "seed"  # data augmentation preset: none | seed (colour jitter, flip, rotation) | standard (random resized crop, flip)
            TOP_CLASS = "dog"  # the class whose top-scoring test images are shown at the end
        """),
        colab(),
        md("""
            # 3 · Develop your own classifier

            Now you design the network. The course's rules for this part: no predefined torchvision models
            and no pretrained weights; everything else is yours to choose. This notebook gives you

            1. a way to write a network down as a short **spec** and see its layer table;
            2. an **ablation**: a list of changes run one after the other, each on top of the previous one,
               giving the report's table (serial, architecture, test mAP);
            3. the **final model** trained longer, its **Kaggle CSV** and its score;
            4. what the final model gets wrong: **precision-recall curves** per class and the **top-scoring
               test images** of a class, marked right or wrong.
        """, PROFILE_NOTE),
        code("""
            from mp3kit import models, plots
            from mp3kit.experiment import Experiment
        """),
        code("""
            exp = Experiment("03_develop_classifier", PROFILE, DATA_ROOT, RUNS_DIR, FIGURES_DIR, retrain=RETRAIN)
        """),
        md("""
            ## Writing a network down

            `models.build(spec)` turns a plain dict into a PyTorch network, so a design fits in a few lines,
            is stored in the run's `config.json`, and can be changed one key at a time:

            - `"blocks"`: the feature extractor, in order. `{"conv": 64, "k": 11, "s": 4, "p": 2}` is a
              convolution with 64 output channels, kernel 11, stride 4, padding 2 (`k` defaults to 3, `s` to
              1, `p` to `k // 2`), followed by a ReLU. Add `"bn": True` for BatchNorm after the convolution,
              `"pool": 3` for a 3×3 max-pool with stride 2 after the block, `"repeat": 2` for the same block
              twice. `{"conv1x1": 128}` is a 1×1 convolution and `{"res": 256}` a residual block of two 3×3
              convolutions with a shortcut.
            - `"pool"`: `"adaptive6"` averages the feature map to 6×6 (AlexNet's choice), `"global"` to 1×1.
            - `"head"`: the hidden fully connected layers, e.g. `[4096, 4096]`, each followed by a ReLU, with
              `"dropout"` before each of them.

            The network below is the seed report's design: AlexNet's layers with BatchNorm after every
            convolution. Change it: this is the cell that makes the network yours.
        """),
        code("""
            MY_NETWORK = {
                "name": "my-network",
                "blocks": [
                    {"conv": 64, "k": 11, "s": 4, "p": 2, "bn": True, "pool": 3},
                    {"conv": 192, "k": 5, "p": 2, "bn": True, "pool": 3},
                    {"conv": 384, "k": 3, "bn": True},
                    {"conv": 256, "k": 3, "bn": True},
                    {"conv": 256, "k": 3, "bn": True, "pool": 3},
                ],
                "pool": "adaptive6",
                "head": [4096, 4096],
                "dropout": 0.5,
            }
        """),
        md("""
            Its layer table at this profile's image size: every layer a forward pass runs, its kernel, its
            input and output shape, channels and parameters. The report's "final architecture" table is this
            one (recorded below). Check the shapes: a map that shrinks to 1×1 too early wastes the layers
            after it, and a network too deep for the image size fails here with a message saying so.
        """),
        code(f"""
            {CHECK}
            arch = exp.architecture(MY_NETWORK)
            exp.record("architecture_table", arch.to_markdown())
            exp.record("total_params", arch.total_params)
            arch
        """),
        md("""
            ## The ablation

            An ablation changes one thing at a time and measures what it did. Each row below is
            `(label, change)`, and each change applies **on top of the row before**: a model spec (or model
            name) replaces the network, a dict changes training settings (any `TrainConfig` field). The
            rows follow the seed report: the AlexNet layers as a spec (*BaseNet*) with the course's SGD, then
            Adam, then data augmentation, then BatchNorm added step by step, then extra convolution layers
            (`models.SEED_ABLATION` holds those network steps; print it to see each spec). Add, remove or
            reorder rows to run your own ablation.

            Every row trains for the profile's usual number of epochs. A row whose network cannot take this
            profile's small images is skipped and marked so (the full profile's 227 px fits all of them).
        """),
        code("""
            ABLATION = [
                ("BaseNet (SGD)", models.BASENET),
                ("BaseNet (Adam)", {"optimizer": "adam", "lr": ADAM_LR}),
                ("BaseNet (Adam) + data augmentation", {"augment": AUGMENT}),
                *models.SEED_ABLATION[1:],  # + BatchNorm after conv 1, after convs 2-3, after all; + extra conv layers
            ]
        """),
        code("""
            exp.ablation(ABLATION)
        """),
        md("""
            The report's ablation table is built from these runs. Its column "best mAP on test set" is each
            row's test mAP, measured once after its last epoch: choosing the epoch (or the row) by its test
            score would be tuning on the test set, and the number would no longer predict the Kaggle score.
            The bars compare every row's test AP per class, with each row's mAP in the legend.
        """),
        code("""
            steps = [f"ablation-{serial}" for serial in range(1, len(ABLATION) + 1)]
            plots.plot_per_class_ap(exp.labelled(*steps), path=exp.figure("ablation-bars"))
        """),
        md("""
            ## The final model

            Your network with the recipe that won the ablation, trained longer. The seed report trained its
            final network for 55 epochs; the course kit's default for this part is 100.
        """),
        code("""
            FINAL = exp.config(model=MY_NETWORK, optimizer="adam", lr=ADAM_LR, augment=AUGMENT, epochs=exp.final_epochs)
            final = exp.run("final", FINAL, label=f"my network, Adam lr {ADAM_LR:g}, augment {AUGMENT}, {FINAL.epochs} epochs")
            plots.plot_history(final, path=exp.figure("final-curves"))
        """),
        md("""
            ## The Kaggle CSV

            The course's Kaggle competition takes one row per class: `id` 0 to 19 in the VOC class order and
            `category` = 1 − AP of that class; its leaderboard score is their mean, 1 − mAP (lower is
            better). The CSV is written next to the final run; `mp3kit submit --check FILE` validates any
            CSV before you upload it.
        """),
        code("""
            kaggle_csv = exp.kaggle_csv(final)
        """),
        md("""
            ## What the final model gets wrong

            **Precision-recall curves.** For each class, walk down the test images from the highest score
            to the lowest: recall is the fraction of that class's images found so far, precision the
            fraction of the images so far that really contain it. AP is the area under this curve; the dotted
            line is the precision of a random ranking. A curve that starts low means the most confident
            answers are already wrong; one that falls off a cliff means the class is found easily in some
            images and not at all in others.
        """),
        code("""
            plots.plot_pr_curves(final, path=exp.figure("final-pr-curves"))
        """),
        md("""
            **Top-scoring test images.** The test images the model is most sure contain `TOP_CLASS`, framed
            green when the class is there and red when it is not (orange: only as a difficult object). The
            red ones show what the network confuses with the class: a similar look, or a context that
            usually comes with it? Change `TOP_CLASS` and run the cell again for another class.
        """),
        code("""
            plots.show_top_images(final, exp.data.test, TOP_CLASS, k=8, path=exp.figure("final-top-images"))
        """),
        code("""
            exp.table()
        """),
        md("""
            ### Report, part 1B: your analysis

            - Did you upload the final CSV to Kaggle, and what was your best score?
            - **Factors that helped.** For each row of the ablation, say why you think the change helped or
              did not. Some starting points: BatchNorm keeps each layer's inputs on a steady scale, which
              allows larger steps and acts as a mild regulariser; augmentation shows the network new
              versions of the same 2,501 images, so 57 million parameters memorise less; extra convolution
              layers add depth and parameters, which helps only while there is data enough to fit them.
            - What do the precision-recall curves and the top-scoring images show the model gets wrong, and
              what would you try next (more epochs, a learning-rate schedule, class weights for rare classes,
              residual blocks, a global average pool instead of the 50-million-parameter head)?

            *Your analysis here.*
        """),
        md(PANEL),
        code("""
            from mp3kit.widgets import TrainPanel

            TrainPanel(exp, base_config=FINAL)  # starts from your network and recipe
        """),
    ]


BUILDERS = {"01_introduction": notebook_01, "02_scratch_vs_pretrained": notebook_02, "03_develop_classifier": notebook_03}


def build(name: str) -> nbformat.NotebookNode:
    """Return the notebook called name, with deterministic cell ids and the kernel metadata."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    nb.cells = BUILDERS[name]()
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}"
    nbformat.validate(nb)
    return nb


def execute_smoke(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run nb in the smoke profile (scratch runs and figures folders) and return it with its outputs."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="mp3kit-nb-") as tmp:
        os.environ.update(MP3KIT_PROFILE="smoke", MP3KIT_QUIET="1", MPLBACKEND="Agg",
                          MP3KIT_RUNS_DIR=str(Path(tmp) / "runs"), MP3KIT_FIGURES_DIR=str(Path(tmp) / "figures"))
        NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def keep_checked_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip every output, execution count and saved widget state except those of cells marked NBVAL_CHECK_OUTPUT."""
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        checked = CHECK in cell.source
        # nbval treats a cell with outputs but no execution count as never run, so checked cells keep one.
        cell.execution_count = number if checked else None
        if not checked:
            cell.outputs = []
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = number
    return nb


def main(argv=None) -> int:
    """Write the notebooks (and with --execute, their checked outputs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run in the smoke profile and keep the checked outputs")
    parser.add_argument("names", nargs="*", help=f"notebooks to write (default: all of {', '.join(BUILDERS)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}: use one of {', '.join(BUILDERS)}")
    for name in args.names or BUILDERS:
        nb = build(name)
        if args.execute:
            t0 = time.monotonic()
            nb = keep_checked_outputs(execute_smoke(nb))
            print(f"{name}: executed in the smoke profile in {time.monotonic() - t0:.0f} s")
        path = NOTEBOOKS / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
