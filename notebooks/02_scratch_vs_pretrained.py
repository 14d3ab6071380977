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
# mp3kit · Notebook 2: AlexNet from scratch and ImageNet-pretrained
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
ADAM_LR = 1e-4  # Adam for AlexNet from scratch, as suggested by the course kit
FINETUNE_LR = 0.001  # the fine-tuning recipe: the learning rate of the pretrained layers (SGD)
HEAD_LR_MULT = 10  # the fine-tuning recipe: the new head learns this many times faster than the pretrained layers
CAM_CLASS = "dog"  # the class whose Grad-CAM maps show where each network looks

# %%
import subprocess, sys  # Colab set-up (nothing happens elsewhere): install mp3kit, then colab.setup readies the VM
KEEP = "pip list --format=freeze | grep -iv '^mp3kit==' > /tmp/colab-keep.txt"  # every package Colab has stays as it is
if "google.colab" in sys.modules and subprocess.run(f"{KEEP}; pip install -q -c /tmp/colab-keep.txt '{REPO_URL}'", shell=True).returncode:
    raise SystemExit(f"Installing mp3kit from REPO_URL = {REPO_URL!r} failed (pip's reason is above): set REPO_URL in the first cell to git+ and your course's mp3kit repository URL, or to the path of an uploaded mp3kit wheel.")
from mp3kit import colab
DATA_ROOT, RUNS_DIR = colab.setup(PROFILE, DATA_ROOT, RUNS_DIR, runs_on_drive=RUNS_ON_DRIVE, sources=VOC_SOURCES, alexnet_weights=True)

# %% [markdown]
# # 2 · AlexNet from scratch, and pretrained on ImageNet
#
# AlexNet (Krizhevsky, Sutskever and Hinton, 2012) won ImageNet 2012 and started the deep-learning
# era of computer vision. Here you train it twice on VOC: once **from scratch** (random weights),
# with three recipes, and once starting from weights **pretrained on ImageNet** (1.2 million
# images of 1,000 classes), replacing only its last layer. The difference between the two is
# what *transfer learning* buys.
#
# On the `full` profile both runs use torchvision's AlexNet with a 20-class last layer. On `quick` and
# `smoke` the run from scratch uses the same layers written as a spec (the seed report's *BaseNet*)
# at 1/8 of the width, so that a CPU can train it, while the pretrained AlexNet keeps its full width:
# its ImageNet weights fix its sizes. Everything you train is recorded under `RUNS_DIR` and reused
# when a cell runs again (see notebook 1).
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
exp = Experiment("02_scratch_vs_pretrained", PROFILE, DATA_ROOT, RUNS_DIR, FIGURES_DIR, retrain=RETRAIN)

# %% [markdown]
# ## The network
#
# Five convolution layers (the first 11×11 with stride 4), three max-pools, an adaptive average
# pool to 6×6, and three fully connected layers with dropout. Count where the parameters are: the
# convolutions hold a few million, the fully connected layers over 50 million. That is a lot to
# learn from 2,501 training images, which is the heart of this notebook. (The `smoke` and `quick`
# profiles build it at 1/8 width, so their table shows the same layers with far fewer parameters;
# `full` shows the real AlexNet.)

# %%
# NBVAL_CHECK_OUTPUT
exp.architecture("alexnet")

# %% [markdown]
# ## Before training: how long will it take?
#
# Every run this notebook trains is listed once, here, in `PLAN` (the training cells below take
# their settings from it, so what is timed here is what trains). The cell times a few real training
# steps of each network on this machine and prints each run's estimate and the total still to
# train; a run already finished with the same settings costs nothing (it is reused). The pretrained
# runs are timed too, whether or not the ImageNet weights are on disk yet: a step takes as long
# whatever the weights hold. AlexNet is the slowest network of the course, so on `full` read the total
# before you start: Colab ends idle sessions and caps long ones, so set `RUNS_ON_DRIVE = True` in the
# first cell (finished runs are kept on your Drive and an interrupted one resumes), run the training
# cells over several sittings, or choose a smaller `PROFILE`.

# %%
PLAN = {
    "alexnet-scratch-sgd": exp.config(model="alexnet"),
    "alexnet-scratch-tuned": exp.config(model="alexnet", epochs=exp.long_epochs),
    "alexnet-scratch-adam": exp.config(model="alexnet", optimizer="adam", lr=ADAM_LR),
    "alexnet-pretrained": exp.config(model="alexnet-pretrained"),
    "alexnet-finetuned": exp.config(model="alexnet-pretrained", lr=FINETUNE_LR, head_lr_mult=HEAD_LR_MULT, augment="flip"),
}
exp.estimate(PLAN)

# %% [markdown]
# ## From scratch, three recipes
#
# 1. **Course SGD**: the course's defaults (SGD, lr 0.01, momentum 0.9), as in notebook 1.
# 2. **Tuned SGD**: the setting that did best in the seed report's study of the simple classifier,
#    SGD 0.01 with longer training (40 epochs in the full profile).
# 3. **Adam** with lr 1e-4, the alternative the course kit suggests for AlexNet.
#
# Training a network this size from scratch is slow to get going: watch whether the mAP moves at all
# in the first epochs, and how each recipe's loss behaves. The seed report (one student's runs of the
# course's kit on real VOC) measured 0.106 test mAP with the course SGD, 0.150 with the longer SGD run
# and 0.272 with Adam, against about 0.07 for chance. The `quick` profile keeps AlexNet's layers but builds it at 1/8 of its width (8 to
# 48 channels, 512 hidden units instead of 4,096; the layer table above shows it), so that a CPU can
# give each recipe the course's 1,000 steps. A narrow network learns less than the real one, and the
# synthetic shapes are easier than photographs, so only the order of the three recipes carries over,
# not their numbers; the BatchNorm networks of notebook 3 climb much faster in the same budget, which
# is one thing BatchNorm buys.

# %%
scratch_sgd = exp.run("alexnet-scratch-sgd", PLAN["alexnet-scratch-sgd"], label="AlexNet from scratch, SGD lr 0.01")
exp.result("alexnet-scratch-sgd", "AlexNet from scratch, course defaults", section="scratch-results")
plots.plot_history(scratch_sgd, path=exp.figure("alexnet-scratch-sgd-curves",
                                                "AlexNet from scratch, course SGD: loss and mAP per epoch", "scratch-plots"))

# %%
scratch_tuned = exp.run("alexnet-scratch-tuned", PLAN["alexnet-scratch-tuned"],
                        label=f"AlexNet from scratch, SGD lr 0.01, {exp.long_epochs} epochs")
plots.plot_history(scratch_tuned, path=exp.figure("alexnet-scratch-tuned-curves",
                                                  "AlexNet from scratch, tuned SGD: loss and mAP per epoch", "scratch-plots"))

# %%
scratch_adam = exp.run("alexnet-scratch-adam", PLAN["alexnet-scratch-adam"],
                       label=f"AlexNet from scratch, Adam lr {ADAM_LR:g}")
exp.table("scratch-runs", ["alexnet-scratch-sgd", "alexnet-scratch-tuned", "alexnet-scratch-adam"], section="scratch-results",
          best=True)
plots.plot_history(scratch_adam, path=exp.figure("alexnet-scratch-adam-curves",
                                                 "AlexNet from scratch with Adam: loss and mAP per epoch", "scratch-plots"))

# %% [markdown]
# ## Pretrained on ImageNet
#
# AlexNet's layers and the same course SGD recipe, but every layer except the last starts from
# ImageNet weights (on `quick` and `smoke` this network is 8 times wider than the one from scratch
# above, so the two differ in size as well as in where they start; on `full` they are the same
# network). mp3kit never downloads them behind your back: it looks in `$MP3KIT_ALEXNET_WEIGHTS`,
# then in torch's hub cache (the Colab cell of this notebook puts them there). If they cannot be
# found, the cell below says where to put them and the notebook goes on without this run; the
# report then says the pretrained result is missing instead of showing a number.

# %%
# None when the ImageNet weights can be loaded; else the reason, which the report gives in these sections
missing = exp.check_pretrained(sections=["pretrained-results", "pretrained-plots", "scratch-vs-pretrained"])

# %%
if missing is None:
    pretrained = exp.run("alexnet-pretrained", PLAN["alexnet-pretrained"],
                         label="AlexNet pretrained on ImageNet, SGD lr 0.01")
    exp.result("alexnet-pretrained", "ImageNet-pretrained AlexNet", section="pretrained-results")
    plots.plot_history(pretrained, path=exp.figure("alexnet-pretrained-curves", "Pretrained AlexNet: loss and mAP per epoch",
                                                   "pretrained-plots"))

# %% [markdown]
# ## Fine-tuning as it is usually done
#
# The run above fine-tunes the course's way: one learning rate, SGD 0.01, for every layer, the new head
# and the ImageNet layers alike, and no augmentation. The usual recipe (see the "Fine-Tuning" chapter of
# *Dive into Deep Learning*) differs in two ways:
#
# 1. **The new head learns faster than the pretrained layers.** The head, the last layer (4,096 → 20
#    scores), starts from random weights and needs large steps; the pretrained layers already hold
#    useful features and need only small corrections, which large steps would wash out in the first
#    epochs. Here the pretrained layers train at `FINETUNE_LR` (0.001, ten times lower than the
#    course's 0.01) and the head at `HEAD_LR_MULT` times that (10 × 0.001 = 0.01): `head_lr_mult` puts
#    the head's parameters (the last `Linear` layer with 20 outputs) in a parameter group of their own.
# 2. **Flip augmentation.** Each training image is mirrored left to right half of the time
#    (`augment="flip"`). VOC's classes look the same either way round, so the network sees twice as
#    many different images and has less chance to memorise the 2,501 it has.
#
# On real VOC 2007 this recipe aims at the published figure for ImageNet-pretrained AlexNet fine-tuned
# on VOC 2007 classification: about **0.78** test mAP (Pathak et al., CVPR 2016, report 78.2%, with a
# longer schedule than the course's 20 epochs). The report puts your number beside it. Compare the two
# pretrained runs' first epochs and their train-val gap: a lower lr for the pretrained layers keeps
# their ImageNet features, and flipping narrows the gap between train and val mAP.

# %%
if missing is None:
    finetuned = exp.run("alexnet-finetuned", PLAN["alexnet-finetuned"],
                        label=f"AlexNet pretrained, fine-tuned: SGD lr {FINETUNE_LR:g}, head x{HEAD_LR_MULT:g}, flip")
    exp.result("alexnet-finetuned", "ImageNet-pretrained AlexNet with the fine-tuning recipe (published on real VOC 2007: "
               "about 0.78 test mAP, Pathak et al., CVPR 2016)", section="pretrained-results")
    exp.table("pretrained-run", ["alexnet-pretrained", "alexnet-finetuned"], section="pretrained-results")
    plots.plot_history(finetuned, path=exp.figure("alexnet-finetuned-curves", "Pretrained AlexNet, fine-tuning recipe: loss "
                                                  "and mAP per epoch", "pretrained-plots"))

# %% [markdown]
# ## Side by side
#
# The curves of the course-SGD and Adam runs from scratch and of the two pretrained runs (when there
# are) on the same axes, then test AP per class. Look at the first epoch: where does each run
# *start*? And per class: does pretraining help every class by about the same amount, or some far
# more than others?

# %%
compared = exp.labelled("alexnet-scratch-sgd", "alexnet-scratch-adam", "alexnet-pretrained", "alexnet-finetuned")
plots.plot_history(compared, path=exp.figure("scratch-vs-pretrained-curves",
                                             "The AlexNet runs side by side: loss and mAP per epoch", "pretrained-plots"))

# %%
exp.table("alexnet-ap", ["alexnet-scratch-sgd", "alexnet-scratch-tuned", "alexnet-scratch-adam", "alexnet-pretrained",
                        "alexnet-finetuned"], "Test AP per class", section="scratch-vs-pretrained", per_class=True)
plots.plot_per_class_ap(compared, path=exp.figure("scratch-vs-pretrained-per-class", "Test AP per class of the AlexNet runs",
                                                  "scratch-vs-pretrained"))

# %% [markdown]
# ### The same images through each network
#
# Five val images, one row per run: each image's true classes and the network's top scores,
# marked **present**, **missed** or **false +**. "Present" needs a threshold per class; each run
# gets its own, chosen on val where it gives the best F1 (never on test). A network near chance
# gives every image about the same scores, so its rows look alike whatever the image holds.

# %%
exp.show_predictions(["alexnet-scratch-sgd", "alexnet-scratch-adam", "alexnet-pretrained"], n=5,
                     caption="The AlexNet runs on the same val images", section="scratch-vs-pretrained")

# %% [markdown]
# ### Where each network looks: Grad-CAM
#
# Grad-CAM (Selvaraju et al., ICCV 2017) asks which parts of an image raised the score of one class:
# it weighs each feature map of the network's last convolution by how much the class's score grows
# with it, and keeps the positive sum, upsampled to the image (mp3kit uses Captum's
# `LayerGradCam`). Red is where the network looked for `CAM_CLASS`, the `+` marks the peak, and the
# white boxes are the annotated objects of that class: a network that learned the class looks at
# the object; one that learned a shortcut looks at what comes with it. The sentence under the
# figure counts how often each map's peak falls inside a box, against a point drawn at random.
# Change `CAM_CLASS` in the first cell to look at another class.

# %%
exp.grad_cam(["alexnet-scratch-sgd", "alexnet-scratch-adam", "alexnet-pretrained"], CAM_CLASS,
             section="scratch-vs-pretrained")

# %% [markdown]
# ### Did your runs show what the seed report found?
#
# The same check as in notebook 1, by the same fixed rule (`mp3kit.findings.RULE`): "reproduced",
# "not reproduced", or "not run" (finding 8 needs the ImageNet weights). Published references for
# comparison, each with the initialisation it belongs to: AlexNet trained on VOC 2007 alone reaches
# about 0.53 test mAP from a random Gaussian initialisation and about 0.57 (56.6%) from the
# data-dependent k-means initialisation of Krähenbühl et al. (ICLR 2016), with far more iterations
# than the course's 20 epochs; fine-tuned from ImageNet it reaches about 0.78-0.80 (Krähenbühl et al.,
# ICLR 2016; Pathak et al., CVPR 2016).

# %%
exp.finding(5, "AlexNet from scratch with the course SGD stays near chance", [("near_chance", "alexnet-scratch-sgd")],
            seed="0.106", published="about 0.53 from a random Gaussian initialisation, 0.57 from a data-dependent "
                                     "one (Krähenbühl et al., ICLR 2016)")
exp.finding(6, "AlexNet from scratch: longer SGD training beats the course's epochs",
            [("beats", "alexnet-scratch-tuned", "alexnet-scratch-sgd")], seed="0.150 vs 0.106")
exp.finding(7, "AlexNet from scratch: Adam beats SGD", [("beats", "alexnet-scratch-adam", "alexnet-scratch-sgd")],
            seed="0.272 vs 0.106")
exp.finding(8, "ImageNet-pretrained AlexNet beats every run from scratch",
            [("beats", "alexnet-pretrained", "alexnet-scratch-sgd", "alexnet-scratch-tuned", "alexnet-scratch-adam")],
            seed="0.680 vs at most 0.272",
            published="about 0.78-0.80 fine-tuned from ImageNet (Krähenbühl et al., ICLR 2016; Pathak et al., CVPR 2016)")

# %%
exp.runs_table()

# %% [markdown]
# ### What transfer learning changed
#
# A network trained on ImageNet has already learned, in its first layers, detectors of edges,
# colour blobs and textures, and in its later layers, of parts and whole objects, many of them
# VOC's own classes (ImageNet has over a hundred dog breeds, and cars, boats and birds). Fine-tuning starts
# from those features, so the 2,501 VOC training images only have to teach the last layer which
# feature combinations mean which class, and to adjust the rest a little. From scratch, the same
# images must teach the whole 57-million-parameter network everything. The published reference:
# pretrained AlexNet fine-tuned on VOC 2007 reaches about 0.78–0.80 mAP; from scratch about 0.53 from
# a random Gaussian initialisation and 0.57 from a data-dependent one (Krähenbühl et al.), both after
# far longer training than the course's 20 epochs.
#
# ### Report 2 and 3: your analysis
#
# - **2a/3a.** Test mAP and average test loss of each run: in the table above and in the report.
# - **3c. Differences from training from scratch (at least 3 sentences).** Compare the first
#   epoch's mAP, how fast the training loss falls, the gap between train and val mAP, and which
#   classes gained most from pretraining. Why would those classes gain most?
# - What did the fine-tuning recipe (a slower body, a faster head, flips) change against the course's
#   single learning rate, and how far is your fine-tuned number from the published 0.78?
# - Which from-scratch recipe worked best, and why might Adam suit a network this size better than
#   SGD at 0.01?
#
# *Your analysis here.*

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
