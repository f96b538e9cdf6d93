"""Poisoning benchmark: does the census find a planted shortcut without being told where, and does it beat the
detectors people use instead? Reproduces the software paper's Fig. 12 (accuracy and HDBSCAN-SpRAy's tau score of
models trained on clean vs poisoned data) and goes further.

    python -m benchmarks poisoning                 # the default grid (see --help; about half an hour on 2 cores)
    python -m benchmarks poisoning --smoke         # 2 artifacts × 2 prevalences × 1 seed, minutes
    python -m benchmarks poisoning --kinds patch checker --prevalences 0.02 0.3 --seeds 3

Data: scikit-learn's digits as 16×16 RGB (`poisoning_data`), ten-class tasks (target class 3 for seed 0, 7 for seed
1, …) and two-class tasks (class c−1 vs c, as in the paper, target c). Per setting (task, attack, artifact, prevalence,
seed): a small CNN trained on the poisoned training split and one on the same split left clean; both explain the
poisoned training samples (LRP, zennit's EpsilonPlusFlat, of each sample's training label). Then, per model:
- clean test accuracy; flip rate (held-out samples of other classes, correctly classified without the artifact,
  turned into the target by pasting it in);
- SpRAy of each class (relaylab's defaults, heatmaps summed over channels and normalised; HDBSCAN with
  min_cluster_size 5 on 8 eigenvectors): **tau** (pair-counting tau, `relaylab.analyze.score.tau_score`: the paper's
  own definition could not be found) and ARI of HDBSCAN's clusters against the poison labels in the target class;
- the census (`relaylab.analyze.census`) of every class: the target's rank among the classes, the classes flagged
  above the report's threshold, and the AUROC / AP of its sample scores for the poison labels in the target class;
- baselines, on the poisoned model only, in the same run: ART's `ActivationDefence` (k-means, 2 clusters, PCA to 10
  dimensions, smaller cluster = poison; a yes/no answer, so its AUROC is its balanced accuracy) and ART's spectral
  signature scores (`SpectralSignatureDefense.spectral_signature_scores` on the activations
  `SpectralSignatureDefense` reads: the last layer's), AUROC / AP on the same samples.
Clean trials (`--clean-trials`): models trained on clean data, explained on clean data: how often the census flags
any class (false alarms).
Correction stage, for each poisoned model that uses its artifact (flip rate ≥ USED): the samples the target class's
census points at taken as the artifact's (`relaylab.fix.job.census_suspects`, what `relaylab fix` takes by default;
how many of them are poisoned is recorded), the layer chosen and the artifact estimated as `relaylab fix` does, then P-ClArC, RR-ClArC
(λ 1e4, 5 epochs, lr 1e-3 on the poisoned training split) and A-ClArC (5 epochs with the estimated artifact pasted
into half the training samples): clean test accuracy, attacked accuracy (other classes' test samples with the true
artifact stamped on, against their true labels) and flip rate, beside the uncorrected model's.

Results: one JSON line per setting in `<out>/poisoning-runs/<grid>.jsonl` (a re-run skips the settings done), then
the summary table on stdout, `poisoning-<stamp>.json/.csv` and the two scatter panels (`poisoning-accuracy.png`,
`poisoning-tau.png`) in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from . import machine_info, row, write_results

DESCRIPTION = "Poisoned digits: census vs ART detectors, tau/accuracy of clean vs poisoned models (the paper's Fig. 12)"
KINDS = ("patch", "frame", "line", "checker", "tint", "pattern")
PREVALENCES = (0.01, 0.02, 0.05, 0.10, 0.30)
ATTACKS = ("artifact", "backdoor")
TWO_CLASS_TARGETS = (3, 8)  # class c−1 vs c
USED = 0.2  # flip rate at which a model counts as using the artifact (the issue's goals)
RECORD = 2  # 2: records carry the correction stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=None, help="artifacts (default: all six)")
    parser.add_argument("--prevalences", nargs="+", type=float, default=None, help="default 0.01 0.02 0.05 0.1 0.3")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=None, help="default: both")
    parser.add_argument("--tasks", nargs="+", choices=("ten", "two"), default=None, help="default: both")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 2, 1 with --smoke)")
    parser.add_argument("--clean-trials", type=int, default=None, help="clean models checked for false alarms (default 10)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default: 2)")
    parser.add_argument("--fresh", action="store_true", help="ignore the settings recorded by an earlier run of this grid")
    parser.add_argument("--project", nargs="+", metavar="PROJECT", help="also run the grid on these projects' images and labels "
                        "(ViRelAy project YAML or relaylab store; images scaled to at most 32 × 32)")


# --------------------------------------------------------------------------------------------------- one setting

SPRAY = {"preprocessing": [{"channel_reduce": "sum"}, {"normalize": "sum"}],
         "clusterings": {"kmeans": {"k": [2, 3, 4, 5]}, "hdbscan": {"min_cluster_size": 5, "eigenvectors": 8}}}


def _spray_and_census(heatmaps, labels, poison, target: int) -> dict:
    """SpRAy and census of every class of `labels`; tau/ARI/census figures of the target class."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from relaylab.analyze.census import census_category
    from relaylab.analyze.census_report import FLAG_THRESHOLD
    from relaylab.analyze.config import DEFAULTS, build_spray
    from relaylab.analyze.score import adjusted_rand, tau_score

    config = {**DEFAULTS, **SPRAY}
    scores, out = {}, {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        x = heatmaps[members]
        spray = build_spray(config).fit(x)
        census = census_category(x, members, spray.eigenvalues_, spray.labels_).dataset
        scores[int(c)] = float(census["score"])
        if c == target:
            from relaylab.fix.job import census_suspects

            out["_suspects"] = members[census_suspects(census)[0]]  # what `relaylab fix` takes by default
            truth = poison[members]
            hdbscan = next(v for k, v in spray.labels_.items() if k.startswith("hdbscan"))
            sample = census["sample_score"].values
            some = bool(truth.any())  # a clean trial has no poison labels to agree with
            out.update(tau=tau_score(hdbscan, truth) if some else float("nan"), ari=adjusted_rand(hdbscan, truth) if some else float("nan"),
                       census_auroc=float(roc_auc_score(truth, sample)) if 0 < truth.sum() < len(truth) else float("nan"),
                       census_ap=float(average_precision_score(truth, sample)) if truth.any() else float("nan"),
                       census_score=scores[int(c)])
    ranked = sorted(scores, key=lambda c: -scores[c])
    out.update(census_rank=ranked.index(target) + 1, flagged=[c for c in ranked if scores[c] > FLAG_THRESHOLD],
               class_scores=scores)
    return out


def _art(model, x, y, n_classes: int, target: int, poison) -> dict:
    """ART's ActivationDefence and spectral signature scores on the target class (see the module's docstring)."""
    import numpy as np
    import torch
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:], nb_classes=n_classes,
                                   clip_values=(0.0, 1.0))
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    members = np.flatnonzero(y == target)
    truth = poison[members]
    out = {}
    defence = ActivationDefence(classifier, x, onehot)
    _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="smaller")
    flagged = 1 - np.asarray(is_clean)[members]
    out["activation_auroc"] = float(roc_auc_score(truth, flagged))
    out["activation_ap"] = float(average_precision_score(truth, flagged))
    layers = classifier.layer_names
    features = classifier.get_activations(x[members], layer=len(layers) - 1, batch_size=256).reshape(len(members), -1)
    signature = SpectralSignatureDefense.spectral_signature_scores(features).ravel()
    out["signature_auroc"] = float(roc_auc_score(truth, signature))
    out["signature_ap"] = float(average_precision_score(truth, signature))
    return out


CORRECTIONS = ("p-clarc", "rr-clarc", "a-clarc")


def _correct(model, data, heatmaps, suspects, seed: int) -> dict:
    """Each ClArC method applied to a copy of `model` along the direction of the samples the census points at in the target
    class (`suspects`), the layer chosen and the artifact estimated as `relaylab fix` does; per method (and for the
    uncorrected model) clean test accuracy, attacked accuracy (test samples of the other classes with the true
    artifact stamped on, against their true labels) and flip rate."""
    import copy

    import numpy as np
    import torch

    from relaylab.fix.clarc import add_projection, rr_clarc
    from relaylab.fix.job import candidate_layers, fine_tune, layer_search
    from relaylab.fix.verify import estimate_artifact, paste

    from .poisoning_data import accuracy, flip_rate, stamp

    x, y, target = data.x_train, data.y_train, data.target
    members = np.flatnonzero(y == target)
    rest = np.setdiff1d(members, suspects)
    truth = data.poison_train[suspects]
    out = {"suspects": int(len(suspects)), "suspect_precision": float(truth.mean()) if len(suspects) else float("nan"),
           "suspect_recall": float(truth.sum() / max(data.poison_train[members].sum(), 1))}
    if len(suspects) < 2 or len(rest) < 2:
        return {**out, "skipped": "the census's suspects leave fewer than 2 samples a side"}
    others = np.flatnonzero(y != target)
    attacked_x = stamp(data.x_test[data.y_test != target], data.kind)
    attacked_y = data.y_test[data.y_test != target]

    def numbers(m) -> dict:
        return {"accuracy": accuracy(m, data.x_test, data.y_test), "attacked_accuracy": accuracy(m, attacked_x, attacked_y),
                "flip_rate": flip_rate(m, data.x_test, data.y_test, target, data.kind)}

    out["uncorrected"] = numbers(model)
    artifact, mask, how = estimate_artifact(x[suspects], x[rest], heatmaps[suspects], heatmaps[rest])
    out["artifact_mask_pixels"] = how["mask_pixels"]
    rows = np.r_[suspects, rest]
    is_artifact = np.r_[np.ones(len(suspects), bool), np.zeros(len(rest), bool)]
    to_input = torch.as_tensor
    layer, cav, _ = layer_search(model, to_input, x[rows], is_artifact, candidate_layers(model, x.shape[1:], len(rows)), x[others],
                                 y[others], target, artifact, mask, seed=seed)
    out.update(layer=layer, cav_accuracy=cav.accuracy)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for method in CORRECTIONS:
        corrected = copy.deepcopy(model)
        if method == "p-clarc":
            add_projection(corrected, layer, cav)
        elif method == "rr-clarc":
            rr_clarc(corrected, layer, cav, xt, yt, strength=1e4, epochs=5, lr=1e-3, seed=seed)
        else:
            augmented = x.copy()
            half = np.random.default_rng(seed).random(len(x)) < 0.5
            augmented[half] = paste(augmented[half], artifact, mask)
            fine_tune(corrected, torch.as_tensor(augmented), yt, epochs=5, lr=1e-3, seed=seed, progress=False)
        out[method] = numbers(corrected)
    return out


def task_data(task: str, seed: int, project: str | None = None):
    """(images, labels, n_classes, target, description) of a task: on digits, or on a project's images ("ten": all
    of its classes, up to ten; "two": classes c−1 and c)."""
    import numpy as np

    from .poisoning_data import digits, project_images

    def load(classes=None):
        return project_images(project, classes=classes) if project else digits(classes)

    if task == "ten":
        images, labels = load()
        if labels.max() >= 10:
            images, labels = load(tuple(range(10)))
        n = int(labels.max()) + 1
        target = (3 + 4 * seed) % n
        return images, labels, n, target, f"{n} classes, target {target}"
    _, all_labels = load()
    n = int(np.max(all_labels)) + 1
    c = TWO_CLASS_TARGETS[seed % len(TWO_CLASS_TARGETS)] % n or 1
    images, labels = load((c - 1, c))
    return images, labels, 2, 1, f"{c - 1} vs {c}"


def run_setting(setting: dict) -> dict:
    """Every figure of one setting (see the module's docstring)."""
    import torch

    from .poisoning_data import accuracy, flip_rate, lrp, poison, train

    torch.set_num_threads(1)
    started = time.perf_counter()
    images, labels, n_classes, target, description = task_data(setting["task"], setting["seed"], setting.get("project"))
    kind, attack, prevalence, seed, epochs = setting["kind"], setting["attack"], setting["prevalence"], setting["seed"], setting["epochs"]
    result = {**setting, "description": description, "target": target}
    if attack == "clean":  # a false-alarm trial: clean model, clean data
        data = poison(images, labels, target=target, kind="patch", attack="artifact", prevalence=0.0, seed=seed)
        model = train(data.x_train, data.y_train, n_classes, seed, epochs=epochs)
        heatmaps = lrp(model, data.x_train, data.y_train)
        found = _spray_and_census(heatmaps, data.y_train, data.poison_train, target)
        result.update(accuracy=accuracy(model, data.x_test, data.y_test), flagged=found["flagged"], class_scores=found["class_scores"])
        result["seconds"] = time.perf_counter() - started
        return result
    data = poison(images, labels, target=target, kind=kind, attack=attack, prevalence=prevalence, seed=seed)
    clean = poison(images, labels, target=target, kind=kind, attack=attack, prevalence=0.0, seed=seed)  # the same split
    result["poisoned_samples"] = int(data.poison_train.sum())
    for name, (x, y) in {"clean": (clean.x_train, clean.y_train), "poisoned": (data.x_train, data.y_train)}.items():
        model = train(x, y, n_classes, seed, epochs=epochs)
        heatmaps = lrp(model, data.x_train, data.y_train)
        found = _spray_and_census(heatmaps, data.y_train, data.poison_train, target)
        result[name] = {"accuracy": accuracy(model, data.x_test, data.y_test),
                        "flip_rate": flip_rate(model, data.x_test, data.y_test, target, kind), **found}
        suspects = result[name].pop("_suspects")
        if name == "poisoned":
            result[name].update(_art(model, data.x_train, data.y_train, n_classes, target, data.poison_train))
            if result[name]["flip_rate"] >= USED:  # a model that uses the artifact: correct it, as the census found it
                result["correction"] = _correct(model, data, heatmaps, suspects, seed)
    result["seconds"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------------- the grid

def grid(args) -> list[dict]:
    kinds = args.kinds or (["patch", "checker"] if args.smoke else list(KINDS))
    prevalences = args.prevalences or ([0.02, 0.3] if args.smoke else list(PREVALENCES))
    attacks = args.attacks or list(ATTACKS)
    tasks = args.tasks or ["ten", "two"]
    seeds = args.seeds or (1 if args.smoke else 2)
    clean_trials = args.clean_trials if args.clean_trials is not None else (2 if args.smoke else 10)
    settings = []
    for project in [None, *(str(Path(p).resolve()) for p in args.project or [])]:
        settings += [{"task": t, "attack": a, "kind": k, "prevalence": p, "seed": s, "epochs": args.epochs, "project": project}
                     for t in tasks for a in attacks for k in kinds for p in prevalences for s in range(seeds)]
        settings += [{"task": "ten", "attack": "clean", "kind": "none", "prevalence": 0.0, "seed": 100 + s, "epochs": args.epochs,
                      "project": project} for s in range(clean_trials)]
    return settings


def key(setting: dict) -> str:
    named = {k: setting[k] for k in ("task", "attack", "kind", "prevalence", "seed", "epochs")}
    named["record"] = RECORD  # a log of records without the correction stage is not read back as this grid's
    if setting.get("project"):  # digits settings keep the keys they had before projects could be given
        named["project"] = setting["project"]
    return json.dumps(named, sort_keys=True)


def run_grid(settings: list[dict], log: Path, workers: int, fresh: bool) -> list[dict]:
    """Run the settings not yet in `log` (one JSON line each, appended as they finish), return all of the grid's."""
    import concurrent.futures
    import multiprocessing

    done = {}
    if log.is_file() and not fresh:
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
                done[key(record)] = record
            except (json.JSONDecodeError, KeyError):
                continue  # a line a kill cut short
    todo = [s for s in settings if key(s) not in done]
    print(f"poisoning: {len(settings)} settings, {len(settings) - len(todo)} done before, {len(todo)} to run "
          f"on {workers} processes", flush=True)
    from tqdm.auto import tqdm

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out, tqdm(total=len(todo), desc="poisoning", unit="setting") as bar, \
            concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for record in pool.map(run_setting, todo) if workers > 1 else map(run_setting, todo):
            out.write(json.dumps(record) + "\n")
            out.flush()
            done[key(record)] = record
            bar.update(1)
    return [done[key(s)] for s in settings]


# --------------------------------------------------------------------------------------------------- summary

def data_name(record: dict) -> str:
    if not record.get("project"):
        return "digits"
    path = Path(record["project"])
    return path.parent.name if path.stem == "project" else path.stem  # project.yaml / project.zarr: name the folder


def summarise(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows for the results file and the printed lines: per (attack, kind, prevalence) over tasks and seeds."""
    import numpy as np

    rows, lines = [], []
    poisoned = [r for r in records if r["attack"] != "clean"]
    groups: dict[tuple, list[dict]] = {}
    for r in poisoned:
        groups.setdefault((data_name(r), r["attack"], r["kind"], r["prevalence"]), []).append(r)
    header = (f"{'data':10s}{'attack':9s}{'artifact':9s}{'prev':>6s}{'n':>3s}{'flip':>6s}{'acc c/p':>12s}{'tau c/p':>12s}{'ARI p':>7s}"
              f"{'rank1':>7s}{'census':>8s}{'ActDef':>8s}{'SpecSig':>8s}{'AP cen':>8s}{'AP SS':>7s}")
    lines.append(header)
    mean = lambda values: float(np.nanmean(values)) if len(values) else float("nan")  # noqa: E731
    for (data, attack, kind, prevalence), group in sorted(groups.items()):
        p = [r["poisoned"] for r in group]
        c = [r["clean"] for r in group]
        ten = [x for r, x in zip(group, p) if r["task"] == "ten"]
        figures = {
            "flip_rate": mean([x["flip_rate"] for x in p]), "accuracy_clean": mean([x["accuracy"] for x in c]),
            "accuracy_poisoned": mean([x["accuracy"] for x in p]), "tau_clean": mean([x["tau"] for x in c]),
            "tau_poisoned": mean([x["tau"] for x in p]), "ari_poisoned": mean([x["ari"] for x in p]),
            "rank1_ten": mean([x["census_rank"] == 1 for x in ten]) if ten else float("nan"),
            "census_auroc": mean([x["census_auroc"] for x in p]), "activation_auroc": mean([x["activation_auroc"] for x in p]),
            "signature_auroc": mean([x["signature_auroc"] for x in p]), "census_ap": mean([x["census_ap"] for x in p]),
            "signature_ap": mean([x["signature_ap"] for x in p]), "activation_ap": mean([x["activation_ap"] for x in p]),
        }
        case = f"{data}/{attack}/{kind}/{prevalence:g}"
        rows += [row("poisoning", case, name, value, "") for name, value in figures.items()]
        lines.append(f"{data[:9]:10s}{attack:9s}{kind:9s}{prevalence:6.2f}{len(group):3d}{figures['flip_rate']:6.2f}"
                     f"{figures['accuracy_clean']:6.3f}/{figures['accuracy_poisoned']:.3f}"
                     f"{figures['tau_clean']:6.2f}/{figures['tau_poisoned']:5.2f}{figures['ari_poisoned']:7.2f}"
                     f"{figures['rank1_ten']:7.2f}{figures['census_auroc']:8.3f}{figures['activation_auroc']:8.3f}"
                     f"{figures['signature_auroc']:8.3f}{figures['census_ap']:8.3f}{figures['signature_ap']:7.3f}")
    # the issue's goals, over the settings whose poisoned model uses the artifact
    used = [r for r in poisoned if r["poisoned"]["flip_rate"] >= USED]
    lines.append("")
    lines.append(f"settings whose model uses the artifact (flip rate ≥ {USED:.0%}): {len(used)} of {len(poisoned)}")
    if used:
        best_art = [max(r["poisoned"]["activation_auroc"], r["poisoned"]["signature_auroc"]) for r in used]
        wins = [r["poisoned"]["census_auroc"] >= b for r, b in zip(used, best_art)]
        at2 = [r["poisoned"]["census_auroc"] for r in used if abs(r["prevalence"] - 0.02) < 1e-9]
        ten = [r for r in used if r["task"] == "ten"]
        lines.append(f"  census AUROC ≥ best ART detector's: {sum(wins)} of {len(used)}")
        lines.append(f"  census AUROC at 2%: min {min(at2):.3f}, ≥ 0.95 in {sum(a >= 0.95 for a in at2)} of {len(at2)}" if at2 else
                     "  census AUROC at 2%: no such setting")
        if ten:
            first = sum(r["poisoned"]["census_rank"] == 1 for r in ten)
            lines.append(f"  poisoned class ranked first among all classes (ten-class tasks): {first} of {len(ten)}")
        losses = [f"{data_name(r)}/{r['task']}/{r['attack']}/{r['kind']}/{r['prevalence']:g}/s{r['seed']}: census {r['poisoned']['census_auroc']:.3f} "
                  f"vs ART {b:.3f}" for r, b, w in zip(used, best_art, wins) if not w]
        if losses:
            lines.append("  where the census loses to an ART detector:")
            lines += [f"    {loss}" for loss in losses]
        rows.append(row("poisoning", "goals", "census_wins", sum(wins) / len(used), "fraction"))
        lines += correction_lines(used, rows)
    clean = [r for r in records if r["attack"] == "clean"]
    if clean:
        alarms = [len(r["flagged"]) > 0 for r in clean]
        lines.append(f"clean trials with a class flagged (false alarms): {sum(alarms)} of {len(clean)} "
                     f"({', '.join(str(r['flagged']) for r in clean if r['flagged']) or 'none'})")
        rows.append(row("poisoning", "clean", "false_alarm_trials", sum(alarms) / len(clean), "fraction"))
    return rows, lines


def correction_lines(used: list[dict], rows: list[dict]) -> list[str]:
    """The correction stage's summary over the settings whose model uses the artifact and whose census suspects are
    mostly poisoned samples ("found"): per method and attack, mean clean accuracy, attacked accuracy and flip rate."""
    import numpy as np

    corrected = [r for r in used if "skipped" not in r.get("correction", {"skipped": "not run"})]
    found = [r for r in corrected if r["correction"]["suspect_precision"] >= 0.5]
    lines = ["", f"correction (relaylab fix's methods on the samples the census points at): {len(corrected)} settings corrected, the suspects "
             f"mostly poisoned samples in {len(found)}"]
    if not found:
        return lines
    lines.append(f"  {'attack':9s}{'method':12s}{'n':>4s}{'clean acc':>10s}{'attacked':>10s}{'flip':>7s}{'attacked ≥ 0.9 clean':>22s}")
    for attack in ("artifact", "backdoor"):
        group = [r["correction"] for r in found if r["attack"] == attack]
        for method in ("uncorrected", *CORRECTIONS):
            if not group:
                continue
            clean = np.array([g[method]["accuracy"] for g in group])
            attacked = np.array([g[method]["attacked_accuracy"] for g in group])
            flips = np.array([g[method]["flip_rate"] for g in group], dtype=float)
            held = int((attacked >= 0.9 * clean).sum())
            lines.append(f"  {attack:9s}{method:12s}{len(group):4d}{clean.mean():10.3f}{attacked.mean():10.3f}{np.nanmean(flips):7.3f}"
                         f"{held:>14d} of {len(group)}")
            for name, value in (("accuracy", clean.mean()), ("attacked_accuracy", attacked.mean()), ("flip_rate", np.nanmean(flips)),
                                ("attacked_ge_0.9_clean", held / len(group))):
                rows.append(row("poisoning", f"correction/{attack}/{method}", name, float(value), ""))
    return lines


def scatter(records: list[dict], out: Path) -> list[Path]:
    """The paper's two panels: accuracy and tau, clean model (x) vs poisoned model (y), one point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    poisoned = [r for r in records if r["attack"] != "clean"]
    paths = []
    for figure_name, field, label in (("accuracy", "accuracy", "test accuracy"), ("tau", "tau", "tau score (pair counting)")):
        figure, axes = plt.subplots(figsize=(4.5, 4.2), dpi=120)
        for attack, marker in (("artifact", "o"), ("backdoor", "^")):
            group = [r for r in poisoned if r["attack"] == attack]
            axes.scatter([r["clean"][field] for r in group], [r["poisoned"][field] for r in group], marker=marker, s=16,
                         c=[r["prevalence"] for r in group], cmap="viridis", label=attack, vmin=0, vmax=0.3)
        values = [v for r in poisoned for v in (r["clean"][field], r["poisoned"][field]) if v == v]
        low = min(values) - 0.05 * (1 - min(values)) if values else 0.0
        axes.plot([low, 1], [low, 1], color="grey", lw=0.8, ls="--")
        axes.set_xlim(low, 1.005)
        axes.set_ylim(low, 1.005)
        axes.set_xlabel(f"{label}\nmodel trained on clean data", fontsize=9)
        axes.set_ylabel(f"{label}\nmodel trained on poisoned data", fontsize=9)
        axes.legend(fontsize=7, title="colour: prevalence", title_fontsize=7)
        figure.tight_layout()
        path = out / f"poisoning-{figure_name}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def run(args) -> int:
    out = Path(args.out)
    settings = grid(args)
    name = hashlib.sha1(json.dumps([key(s) for s in settings]).encode()).hexdigest()[:10]
    started = time.perf_counter()
    records = run_grid(settings, out / "poisoning-runs" / f"{'smoke-' if args.smoke else ''}{name}.jsonl", args.workers, args.fresh)
    elapsed = time.perf_counter() - started
    rows, lines = summarise(records)
    rows.append(row("poisoning", "grid", "wall", elapsed, "s"))
    print("\n".join(lines))
    print(f"\n{len(settings)} settings; this run {elapsed:.0f} s wall on {args.workers} processes "
          f"(settings done before are read back, not re-timed); per setting {sum(r['seconds'] for r in records) / len(records):.1f} s")
    pictures = scatter(records, out)
    json_path, _ = write_results("poisoning", rows, out=out, config=vars(args) | {"settings": len(settings)}, machine=machine_info(),
                                 notes=[f"scatter panels: {', '.join(map(str, pictures))}"])
    print(f"results: {json_path}; panels: {', '.join(map(str, pictures))}")
    sys.stdout.flush()
    return 0
