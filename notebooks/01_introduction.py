# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
# mp3kit · Notebook 1: introduction to multi-label classification on PASCAL VOC 2007
# Parameters: edit them here, or let papermill / `mp3kit report` set them (this cell is tagged "parameters").
import os

PROFILE = os.environ.get("MP3KIT_PROFILE", "quick")  # smoke (seconds, for tests) | quick (synthetic data, CPU minutes) | full (the course settings, real VOC)
DATA_ROOT = None  # folder holding VOC 2007, e.g. "data/voc" (`mp3kit data fetch --root data/voc`); None: the embedded synthetic dataset
RUNS_DIR = None  # every run is recorded here, and reused when a cell runs again; None: runs/<PROFILE> in the folder holding your notebooks (at the top of a checkout), where `mp3kit report` looks too
FIGURES_DIR = None  # every figure is saved here as a PNG; None: RUNS_DIR/figures
RETRAIN = False  # True: train every run again even when a finished one with the same settings is on disk
REPO_URL = "git+https://github.com/mp3kit/mp3kit"  # Colab installs mp3kit from here (pip): git+ and a repository URL, or the path of an uploaded wheel
RUNS_ON_DRIVE = False  # Colab: True keeps RUNS_DIR on your Google Drive (mounted when this runs), so runs survive a disconnect
VOC_SOURCES = []  # Colab/full profile: your own VOC archives, tried first: a folder such as "/content/drive/MyDrive/voc" or a base URL
LOWER_LEARNING_RATES = [0.001, 0.0001]  # compared with the course's SGD learning rate 0.01
ADAM_LR = 1e-4  # the seed report's Adam: lr 1e-4, betas (0.9, 0.999), eps 1e-8

# %%
import subprocess, sys  # Colab set-up (nothing happens elsewhere): install mp3kit, then colab.setup readies the VM
KEEP = "pip list --format=freeze | grep -iv '^mp3kit==' > /tmp/colab-keep.txt"  # every package Colab has stays as it is
if "google.colab" in sys.modules and subprocess.run(f"{KEEP}; pip install -q -c /tmp/colab-keep.txt '{REPO_URL}'", shell=True).returncode:
    raise SystemExit(f"Installing mp3kit from REPO_URL = {REPO_URL!r} failed (pip's reason is above): set REPO_URL in the first cell to git+ and your course's mp3kit repository URL, or to the path of an uploaded mp3kit wheel.")
from mp3kit import colab
DATA_ROOT, RUNS_DIR = colab.setup(PROFILE, DATA_ROOT, RUNS_DIR, runs_on_drive=RUNS_ON_DRIVE, sources=VOC_SOURCES)

# %% [markdown]
# # 1 · Introduction: the data, a simple classifier, and its hyperparameters
#
# In this notebook you
#
# 1. look at PASCAL VOC 2007: images and their boxes, how often each class appears, which classes
#    appear together;
# 2. train the course's simple classifier with the course's defaults and read its loss and mAP curves;
# 3. repeat the seed report's hyperparameter study: three learning rates, longer training, Adam.
#
# A code cell here is one to three lines that call `mp3kit`; the text around it says what to look
# for. Every run is recorded on disk under `RUNS_DIR` (its settings, a history per epoch, the test
# scores and a checkpoint). Running a cell again **reuses** a finished run with the same settings
# instead of training it again, and **resumes** one that was interrupted, so a restarted kernel or a
# lost Colab session costs you nothing finished. (In Colab, `RUNS_DIR` on your mounted Google Drive
# keeps runs across sessions.) A cell that makes something for the report says so where it makes it:
# `exp.figure(key, caption, section)` saves a figure for the report section `section`, `exp.table(...)`
# and `exp.result(...)` put runs' numbers there, and `mp3kit report` collects them.
#
# **Profiles.** `PROFILE` in the first cell sets how big every experiment is:
#
# | profile | what it runs |
# |---|---|
# | `smoke` | seconds per run, for tests: 40 synthetic images per split at 64 px, 2 epochs, networks from scratch at 1/8 width |
# | `quick` | minutes on a laptop CPU: the embedded synthetic dataset, the course's 20 epochs (40 for longer training and the final model); notebook 1 at 32 px, batch 8; notebook 2 at 64 px and notebook 3 at 128 px, batch 10, with AlexNet and your own networks built at 1/8 of their width (`TrainConfig.width`) |
# | `full` | the course settings on real VOC 2007: 227 px, batch 50, 20 epochs, evaluation every 5 (a GPU helps) |
#
# The *synthetic* dataset is mp3kit's stand-in for VOC: generated shapes, one look per class, in the
# real VOC folder layout and with VOC's class frequencies and co-occurrences. It lets every cell run
# anywhere in minutes, but its numbers say nothing about photographs: everything trained on it is
# labelled *synthetic*. For your report, use `full` on real VOC 2007 with a GPU (in Colab:
# Runtime → Change runtime type → GPU).

# %%
from mp3kit import plots
from mp3kit.experiment import Experiment

# %%
exp = Experiment("01_introduction", PROFILE, DATA_ROOT, RUNS_DIR, FIGURES_DIR, retrain=RETRAIN)
exp.note("data", exp.data_summary(), section="data")  # the report's data section: which data, and chance level

# %% [markdown]
# ## The data
#
# VOC 2007 has 9,963 photographs split into *train* (2,501), *val* (2,510) and *test* (4,952), with
# 20 object classes. An image often holds several classes (a person on a horse, a chair by a dining
# table), so this is **multi-label** classification: the network gives 20 independent scores, each
# turned into a probability by its own sigmoid, and no softmax makes the classes compete.
#
# Every object is annotated with a box; objects that are tiny or mostly hidden are marked
# *difficult*. Training here uses only which classes are present, not where, but drawing the boxes
# shows what a label means. Look at how many classes an image holds, how small some objects are,
# and the dashed (difficult) boxes.

# %%
plots.show_images_with_boxes(exp.data.train, n=6,
                             path=exp.figure("data-boxes", "Training images with their boxes and class names", "data"))

# %% [markdown]
# How many images of each class are there? The table counts *images* that contain the class (an
# image with three cars counts once) in each split this profile uses; the figure draws the train
# counts as bars (pale: images where the class appears only as difficult objects) and, on the
# right, how many train images hold each pair of classes.

# %%
# NBVAL_CHECK_OUTPUT
exp.data_table()

# %%
plots.plot_label_stats(exp.data.train,
                       path=exp.figure("label-stats", "Positives per class and how often classes appear together", "data"))

# %% [markdown]
# Two things to take from these counts.
#
# **The classes are very unbalanced.** In real VOC, *person* is in about 40% of the images and
# *sheep* in about 2%. A classifier that answers "absent" for everything gets over 90% of its
# yes/no answers right while being useless, so accuracy is not the measure. For each class,
# **average precision (AP)** ranks the test images by the classifier's score for that class and
# averages the precision at the rank of every image that does contain it: a perfect ranking gets
# 1.0, a random one gets about the fraction of images that contain the class. **mAP** is the mean
# AP over the 20 classes, so a rare class counts as much as *person*. mp3kit's AP is the area under
# the precision-recall curve taken at every positive image, as VOC's evaluation has done since 2010;
# VOC 2007's own devkit averaged an *11-point interpolated* precision (the best precision at recall
# 0, 0.1, ..., 1), which reads a little higher. As in VOC's evaluation, an image where a class
# appears only as difficult objects is left out of that class's AP; the course's kit counted it as a
# positive, and the Kaggle CSV follows the kit (notebook 3). `exp.map_conventions(run)` shows a run's
# test mAP under all three.
#
# **Classes come together.** Chairs appear with dining tables, people with horses, bicycles and
# motorbikes. A network can learn such context, and it can also lean on it: expect it to "see" a
# chair where there is only a table. (Once the simple classifier is trained, this notebook measures
# whether it does.)

# %% [markdown]
# ## Before training: how long will it take?
#
# Every run this notebook trains is listed once, here, in `PLAN`: its key and its settings
# (`exp.config(...)` gives the course's defaults at this profile's sizes with the changes named).
# The training cells below take their settings from `PLAN`, so what is timed here is what trains. The
# cell times a few real training steps of each network on this machine and prints each run's
# estimate and the total still to train; a run already finished with the same settings costs
# nothing (it is reused). If the total is long, plan for it: Colab ends idle sessions and caps long
# ones, so set `RUNS_ON_DRIVE = True` in the first cell (finished runs are kept on your Drive and an
# interrupted one resumes), run the training cells over several sittings, or choose a smaller
# `PROFILE`.

# %%
PLAN = {
    "simple-default": exp.config(model="simple"),
    **{f"simple-lr{lr:g}": exp.config(model="simple", lr=lr) for lr in LOWER_LEARNING_RATES},
    "simple-long": exp.config(model="simple", epochs=exp.long_epochs),
    "simple-adam": exp.config(model="simple", optimizer="adam", lr=ADAM_LR),
}
exp.estimate(PLAN)

# %% [markdown]
# ## The simple classifier, with the course's defaults
#
# The course's simple classifier has three convolution layers (5×5, 3×3, 3×3), each followed by a
# ReLU and a 2×2 max-pool, then three fully connected layers (120, 84 and 20 units). The table
# lists every layer with its output shape and number of parameters at this profile's image size
# (at 227 px the first fully connected layer alone holds about 1.3 million of them).

# %%
# NBVAL_CHECK_OUTPUT
exp.architecture("simple")

# %% [markdown]
# Training uses the course's defaults: SGD with learning rate 0.01 and momentum 0.9, batches of 50
# (the `full` profile; `quick` takes batches of 8 at 32 px, see the profile table above), 20 epochs, and the loss is the binary cross-entropy of each class's sigmoid averaged over the 20
# classes (PyTorch's `MultiLabelSoftMarginLoss` computes the same number). The model trains on
# *train*; train and val mAP are measured at the first epoch, every 5th and the last (the kit's
# `test_frequency`), and the test split is scored once, at the end. `exp.config(...)` returns
# these defaults with the profile's sizes and your changes applied; `print(exp.config())` shows
# every field, and `PLAN` above holds each run's.

# %%
default = exp.run("simple-default", PLAN["simple-default"], label="simple, SGD lr 0.01 (course defaults)")
exp.result("simple-default", "Simple classifier with the course defaults", section="simple-results")
exp.map_conventions(default)

# %% [markdown]
# **Report 1a.** The line above gives the test mAP and the average test loss (the mean binary
# cross-entropy over every test image and class). They are stored in the run's `metrics.json`, and
# the report takes them from there, so no number needs copying by hand.
#
# **Report 1b: reading the curves.** The *Loss Plot* shows the training loss of every epoch (solid) and the
# validation loss at the evaluation epochs (dashed); the *mAP Plot* shows train and val mAP at those
# epochs. Is the training loss still falling at the end (more epochs would help)? Does the
# validation loss turn upwards while the training loss keeps falling (overfitting)? How far apart
# are train and val mAP? Note where the loss starts: about 0.69 (ln 2, a probability of 0.5 for
# every class). It drops fast simply because most labels are 0, so "mostly absent" is a cheap
# first lesson: a low loss does not mean a good ranking, which is why we also watch mAP.
#
# The table printed with every run has a *chance* line: the mAP of a network that gives every
# image the same scores. A run near it has learned nothing yet. With SGD at 0.01 this network sits
# near chance for its first few hundred steps while its small initial weights grow, and then its mAP
# starts to climb (on the synthetic data of the `quick` profile, in the second half of its 20 epochs).

# %%
plots.plot_history(default, path=exp.figure("simple-default-curves", "Simple classifier, course defaults: loss and mAP per epoch",
                                            "simple-plots"))

# %% [markdown]
# Test AP per class: which classes does the network rank well, and are the worst ones the rare
# classes from the counts above, or classes that look like others?

# %%
plots.plot_per_class_ap(default, path=exp.figure("simple-per-class-ap", "Simple classifier: test AP per class", "simple-plots"))

# %% [markdown]
# ### What it predicts, image by image
#
# mAP ranks images; it never says "present". To say it, a multi-label network needs a threshold for
# each class: a score at or above it means "present". mp3kit chooses each class's threshold on
# **val**, at the score that gives the best F1 (the balance of precision and recall), never on test.
# Below are six val images with their true classes and the network's scores, each class marked
# **present** (there and found), **missed** (there, but scored below its threshold) or **false +**
# (scored above it, not there), and the highest other scores. The dashed square is the part of the
# image the network sees (a centre crop): an object outside it is missed for a reason.

# %%
exp.show_predictions("simple-default", section="simple-plots")

# %% [markdown]
# ### Errors that come from context, measured
#
# At the start we expected the network to "see" a chair where there is only a table. Here it is
# measured. For each class, take the val images *without* it that the network scores highest for
# it (its worst false positives) and look at which classes those images do hold. A class that turns
# up there far more often than it does in val images in general is either **context** (it comes
# with the class, as tables come with chairs) or a **look-alike** (a confusion of appearance); the
# figure shows which. The sentence under the table checks the chair and the table on this run. On
# the synthetic data, classes that share a colour or a shape are the usual look-alikes, and the
# co-occurrences copy VOC's.

# %%
exp.context_errors("simple-default", expect=("chair", "diningtable"), section="simple-plots")

# %% [markdown]
# ## The seed report's hyperparameter study
#
# **Learning rate.** Everything as before except the learning rate: 0.001 and 0.0001 against the
# course's 0.01. With momentum 0.9, while the gradient keeps its direction, each step moves about
# ten times the learning rate times the gradient. Too small a rate, and 20 epochs are not enough to
# get anywhere; too large, and the loss jumps around or the run diverges (mp3kit stops a run whose
# loss becomes NaN and says so).

# %% [markdown]
# **Before spending epochs: a learning-rate range test.** `exp.lr_find(config)` trains a throwaway
# copy of the network for a couple of hundred batches while the learning rate rises from 1e-6
# to 1, and plots the loss against it. Where the loss falls fastest is a safe learning rate, the
# top of the shaded range is often faster, and where the curve turns upward training diverges. The
# test takes seconds here: read off which of the three rates (0.01, 0.001, 0.0001) it expects to
# train, then check its prediction with the runs below.

# %%
lr_found = exp.lr_find(PLAN["simple-default"], section="simple-plots")

# %%
lr_runs = [default]
for lr in LOWER_LEARNING_RATES:
    lr_runs.append(exp.run(f"simple-lr{lr:g}", PLAN[f"simple-lr{lr:g}"], label=f"simple, SGD lr {lr:g}"))

# %%
plots.plot_history(exp.labelled(*lr_runs),
                   path=exp.figure("lr-study-curves", "Simple classifier, learning-rate study: loss and mAP per epoch",
                                   "simple-plots"))

# %% [markdown]
# **Longer training.** The seed report doubled the epochs (40 instead of 20) with SGD 0.01. Look at
# the validation curves in the second half: still improving, flat, or getting worse?

# %%
long = exp.run("simple-long", PLAN["simple-long"], label=f"simple, SGD lr 0.01, {exp.long_epochs} epochs")
plots.plot_history(long, path=exp.figure("simple-long-curves", "Simple classifier, longer training: loss and mAP per epoch",
                                         "simple-plots"))

# %% [markdown]
# **Adam.** Adam scales each parameter's step by a running estimate of its gradient's size, so one
# learning rate suits layers whose gradients differ by orders of magnitude. The seed report used
# lr 1e-4, betas (0.9, 0.999) and eps 1e-8 (the defaults of `TrainConfig`).

# %%
adam = exp.run("simple-adam", PLAN["simple-adam"], label=f"simple, Adam lr {ADAM_LR:g}")
plots.plot_history(adam, path=exp.figure("simple-adam-curves", "Simple classifier with Adam: loss and mAP per epoch",
                                         "simple-plots"))

# %% [markdown]
# Every run of this notebook side by side. "best val mAP" is the best evaluation epoch on *val*;
# the test split is scored once, after the last epoch, and is never used to choose anything.

# %%
exp.table("simple-study", list(exp.runs), "The hyperparameter study (one change at a time from the course defaults)",
          section="simple-results", best=True)

# %% [markdown]
# ### Did your runs show what the seed report found?
#
# `exp.finding` checks a conclusion of the seed report on this notebook's own runs and prints
# "reproduced", "not reproduced" or "not run"; the report gathers the findings of all three
# notebooks into one table. The rule is fixed beforehand and the same for every run: one run
# *beats* another when its test mAP is higher by at least 0.01, and *leaves chance* when it is at
# least 0.02 above the chance level (`mp3kit.findings.RULE` says it in full). On the synthetic data
# these verdicts say whether the kit's recipes behave as on VOC, not what VOC itself would give.

# %%
exp.finding(1, "the simple classifier with the course defaults leaves chance", [("above_chance", "simple-default")],
            seed="0.147")
exp.finding(2, "with SGD, lr 0.01 beats 0.001 and 0.0001",
            [("beats", "simple-default", *[f"simple-lr{lr:g}" for lr in LOWER_LEARNING_RATES])],
            seed="0.01 best (0.147)")
exp.finding(3, "longer training beats the course's epochs", [("beats", "simple-long", "simple-default")],
            seed="40 epochs 0.186 vs 20 epochs 0.147")
exp.finding(4, "Adam (lr 1e-4) beats SGD (lr 0.01)", [("beats", "simple-adam", "simple-default")],
            seed="0.208 vs 0.147")

# %% [markdown]
# ### Report 1c: your analysis (at least 3 sentences)
#
# Use the curves and the table above; some questions to start from:
#
# - Which learning rate worked best within the epoch budget, and what do the curves of the other
#   two show: too slow, or unstable?
# - Did doubling the epochs help? Point at the part of the curve that tells you whether even more
#   epochs would.
# - What did Adam change compared with SGD at 0.01: how fast the loss falls, the final mAP, the
#   gap between train and val?
# - Which classes are hardest for this network, and why might they be (how many examples, which
#   classes they are confused with)?
#
# *Your analysis here.*

# %% [markdown]
# ## Try your own settings: the training panel
#
# The panel below fills the same `TrainConfig` as the cells above. Pick a model, optimizer, learning
# rate (log scale), epochs, batch size, augmentation and evaluation frequency, then click **Train**:
# the loss and mAP curves update after every epoch and the table lists every run so far with its test
# mAP. **Stop** ends the run after the current batch and keeps its last finished epoch; **Resume**
# continues it. Training runs in the background, so the notebook stays usable.
#
# Panel runs are recorded under `RUNS_DIR` like every other run (named `panel-1-simple`, ...), so
# `plots.plot_history(f"{RUNS_DIR}/panel-1-simple")` plots one again. In Colab the first cell has already
# turned on the widget manager; in JupyterLab nothing else is needed. (Under papermill and nbval the
# panel is drawn and the notebook goes on.)

# %%
from mp3kit.widgets import TrainPanel

TrainPanel(exp)

# %% [markdown]
# ## Your report
#
# This cell builds the report from every run recorded in `RUNS_DIR` so far, this notebook's and the
# others', and trains nothing: `report.md`, `report.html` and the figures go to the `report` folder
# beside the runs folder (the one `mp3kit report` writes), where your own text in `report.md` is kept.
# In Colab it downloads them as one zip (with `RUNS_ON_DRIVE`, the report stays on your Drive too);
# elsewhere it prints where the zip is. Under `mp3kit report` it does nothing: that command builds
# the report itself.

# %%
exp.build_report()
