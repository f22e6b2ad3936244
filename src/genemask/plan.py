"""The pipeline's plan, computed from the config: validation, sources, chunks, tasks, targets.

The Snakefile calls these functions and does nothing else with the config, so that the plan is
unit-tested like any other stage and the workflow files only wire rules together.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from . import defaults as D
from .defaults import ROOT, SCHEMA  # noqa: F401 - SCHEMA re-exported
from .genome import plan_chunks
from .util import GeneMaskError  # noqa: F401 - re-exported for the Snakefile

# Sections whose keys plan.resolve fills from the schema's `default:` values: the optional ones are
# created when absent, pretrain/finetune (required) filled when given, and their `settings` too
# (fill_settings): the rules pass the resolved settings as the jobs' params, so a changed default
# changes the params of exactly the jobs it changes and Snakemake reruns them. Not filled: predict
# (its options are passed only when given, so the commands' own defaults, the schema's, hold).
FILLED = {"ngrams": True, "npmi": True, "corpus": True, "report": True, "probe": True, "explain": True,
          "pretrain": False, "finetune": False}
SETTINGS = ("pretrain.settings", "finetune.settings")  # filled by fill_settings (pretrain's masking options too)


def fill_settings(cfg: dict) -> None:
    """Every schema default into the settings blocks of `cfg` (in place; a non-mapping is left to the
    schema): what the jobs run with, written out, so that it is what Snakemake compares."""
    for path in SETTINGS:
        section, key = path.split(".")
        given = cfg.get(section)
        if isinstance(given, dict) and isinstance(given.get(key, {}), dict):
            settings = {**D.defaults(path), **(given.get(key) or {})}
            if section == "pretrain" and isinstance(settings["masking"], dict):  # p, high_radius: per scheme / k
                settings["masking"] = {**D.defaults("pretrain.settings.masking"), **settings["masking"]}
            cfg[section] = {**given, key: settings}


def export_root() -> None:
    """Export GENEMASK_ROOT (this checkout) for envs/genemask.post-deploy.sh, which installs the
    package into the conda env that `--sdm conda` builds (a relative pip path cannot: snakemake
    copies env files into .snakemake/conda/ before conda reads them)."""
    import os

    os.environ["GENEMASK_ROOT"] = str(ROOT)


def export_own_bin() -> None:
    """Put this interpreter's bin folder first on the jobs' PATH, so that a snakemake started by
    absolute path from an environment that is not activated (`.venv/bin/snakemake ...`, a cron job,
    a SLURM job script) runs its own `genemask`, not none (exit 127) or another install's."""
    import os
    import sys

    own = os.path.dirname(sys.executable)  # not resolved: a venv's bin holds a link to the interpreter
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != own:
        os.environ["PATH"] = own + (os.pathsep + path if path else "")


def check_checkout(workflow_dir: str | Path) -> None:
    """The workflow in `workflow_dir` and the imported package must come from one checkout: the
    package finds the schema, the catalogues (config/) and the model configurations (resources/)
    next to itself (ROOT), so a package installed from another version, or not editable (site-packages
    has no config/ or resources/), would silently pair this workflow with other files."""
    wf = Path(workflow_dir).resolve()
    if wf != (ROOT / "workflow").resolve():
        raise GeneMaskError(f"{wf}: the genemask package is imported from {Path(__file__).parent}, which is not "
                            f"this workflow's checkout; install it from there: pip install -e {wf.parent}")


MAX_CONFIG_NODES = 1_000_000  # values of a config once its aliases are expanded (ours: a few hundred)


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise GeneMaskError(f"{path}: cannot read YAML ({e})") from None
    n = expanded_size(data)
    if n > MAX_CONFIG_NODES:  # a "billion laughs": small on disk, gigabytes once a reader copies it
        raise GeneMaskError(f"{path}: its YAML aliases expand to {n:,} values (more than {MAX_CONFIG_NODES:,}); "
                            f"refusing a config that would take gigabytes once expanded")
    return data


def expanded_size(data) -> int:
    """How many values `data` holds with every YAML alias expanded, counted without expanding
    (yaml shares an aliased node: its size is computed once, by identity)."""
    memo: dict[int, int] = {}

    def size(x) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        if id(x) not in memo:
            memo[id(x)] = 0  # a recursive alias (&a [*a]) counts as one
            memo[id(x)] = 1 + sum(size(v) for v in (x.values() if isinstance(x, dict) else x))
        return memo[id(x)]

    return size(data)


def validate(config: dict, schema_path: str | Path | None = None, where: str = "config") -> dict:
    """Check `config` against the JSON schema; the first error becomes one line naming the key."""
    D.check_against(_load_yaml(Path(schema_path)) if schema_path else D.schema(), config, where)
    return config


def resolve(config: dict, where: str = "config") -> dict:
    """Merge the catalogues (config/sources.yaml, config/tasks.yaml) and defaults, validate against the
    schema, run the cross-checks `CHECKS` in order (the first failing one is the error), resolve predict."""
    cfg = merge(config, where)
    validate(cfg, where=where)
    for check in CHECKS:
        check(cfg, where)
    if cfg.get("predict") is not None:
        cfg["predict"] = _resolve_predict(cfg, where)
    return cfg


def merge(config: dict, where: str) -> dict:
    """`config` with the schema's defaults filled (FILLED) and the catalogues merged: a config entry
    adds a source/task or overrides keys of a catalogued one (e.g. only hg38's sha256); a local-file
    task (with `train`) replaces a catalogued task of the same name whole. Not validated yet."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for key, create in FILLED.items():  # the schema's defaults (a non-mapping is left to the schema)
        given = cfg.get(key)
        if isinstance(given, dict) or (given is None and create):
            cfg[key] = {**D.defaults(key), **(given or {})}
    fill_settings(cfg)  # pretrain/finetune settings complete: the rules pass them as params
    for key in ("sources", "tasks"):
        merged = _load_yaml(ROOT / "config" / f"{key}.yaml")
        given = config.get(key) or {}
        if not isinstance(given, dict):
            raise GeneMaskError(f"{where}: key '{key}': expected a mapping of names to entries")
        for name, entry in given.items():
            keep = {} if key == "tasks" and isinstance(entry, dict) and "train" in entry else merged.get(name, {})
            merged[name] = {**keep, **entry} if isinstance(entry, dict) else entry
        cfg[key] = merged
    for name, task in cfg["tasks"].items():  # on_conflict, draw_seed
        if isinstance(task, dict):
            kind = "local_task" if "train" in task else "catalogued_task"
            cfg["tasks"][name] = {**D.defaults(f"definitions.{kind}"), **task}
    return cfg


# ---- cross-checks: each refuses one thing the schema cannot see, with one line naming the key -----
def _need_source(cfg: dict, name: str, key: str, where: str) -> None:
    if name not in cfg["sources"]:
        raise GeneMaskError(f"{where}: key '{key}': source {name!r} is not declared (config/sources.yaml or sources:)")


def _check_genome_source(cfg: dict, where: str) -> None:
    """Refuses a genome.source that no source declares."""
    _need_source(cfg, cfg["genome"]["source"], "genome.source", where)


def _check_tasks(cfg: dict, where: str) -> None:
    """Refuses a faulty fine-tuning task: runs `TASK_CHECKS` on each of finetune.tasks in turn."""
    for t in cfg["finetune"]["tasks"]:
        for check in TASK_CHECKS:
            check(cfg, t, where)


def _check_task_known(cfg: dict, t: str, where: str) -> None:
    """Refuses a task of finetune.tasks that is neither catalogued nor given under tasks:."""
    if t not in cfg["tasks"]:
        raise GeneMaskError(f"{where}: key 'finetune.tasks': unknown task {t!r} (known: {', '.join(cfg['tasks'])})")


def _check_task_name(cfg: dict, t: str, where: str) -> None:
    """Refuses a task name that cannot name result folders (TASK_NAME)."""
    if not TASK_NAME.fullmatch(t):
        raise GeneMaskError(f"{where}: key 'finetune.tasks': task name {t!r} must be letters, digits, '_' or '-' "
                            f"(it names result folders)")


def _check_max_test(cfg: dict, t: str, where: str) -> None:
    """Refuses a finetune.max_test (0 = all) below the task's number of classes: a class would go unscored."""
    task = cfg["tasks"][t]
    max_test = cfg["finetune"]["max_test"]
    if 0 < max_test < task["num_labels"]:
        raise GeneMaskError(f"{where}: key 'finetune.max_test': {max_test} test rows cannot keep each of the "
                            f"{task['num_labels']} classes of task {t!r} (use >= {task['num_labels']}, or 0 = all)")


def _check_local_files(cfg: dict, t: str, where: str) -> None:
    """Refuses a local-file task whose train/test/exclude file does not exist; makes their paths
    absolute in place (`_local_files`)."""
    if is_local(cfg, t):
        _local_files(cfg["tasks"][t], f"{where}: key 'tasks.{t}")


def _check_task_sources(cfg: dict, t: str, where: str) -> None:
    """Refuses a catalogued task whose test or exclude source is not declared."""
    if is_local(cfg, t):
        return
    task = cfg["tasks"][t]
    _need_source(cfg, task["test"], f"tasks.{t}.test", where)
    for e in task.get("exclude", []):
        _need_source(cfg, e, f"tasks.{t}.exclude", where)


def _check_task_shots(cfg: dict, t: str, where: str) -> None:
    """Refuses a catalogued task without shot sizes (a per-task finetune.shots mapping that omits it
    would drop it silently), and a shot that is not in the task catalogue or names an undeclared source."""
    if is_local(cfg, t):
        return
    task = cfg["tasks"][t]
    if not task_shots(cfg, t):
        raise GeneMaskError(f"{where}: key 'finetune.shots': no shot sizes for task {t!r} (the mapping lists "
                            f"{', '.join(map(str, cfg['finetune']['shots'])) or 'no task'})")
    for shot in task_shots(cfg, t):
        name = task["shots"].get(str(shot), task["shots"].get(shot))
        if name is not None:
            _need_source(cfg, name, f"tasks.{t}.shots.{shot}", where)
        elif str(shot) not in task["shots"] and shot not in task["shots"]:
            known = ", ".join(map(str, task["shots"])) or "none"
            raise GeneMaskError(f"{where}: key 'finetune.shots': shot {shot} of task {t!r} is not in the task "
                                f"catalogue (tasks.{t}.shots has {known}; null marks a file known to be missing)")


def _check_model_file(cfg: dict, where: str) -> None:
    """Refuses a pretrain.model without its configuration resources/models/<model>.json."""
    model = ROOT / "resources" / "models" / f"{cfg['pretrain']['model']}.json"
    if not model.exists():
        raise GeneMaskError(f"{where}: key 'pretrain.model': no model configuration {model}")


def _check_eval_steps(cfg: dict, where: str) -> None:
    """Refuses a pretrain.eval_steps entry past the run's last step (no checkpoint would exist)."""
    steps = pretrain_steps(cfg)
    for e in cfg["pretrain"].get("eval_steps") or []:
        if e > steps:
            raise GeneMaskError(f"{where}: key 'pretrain.eval_steps': step {e} is past the run's "
                                f"pretrain.settings.steps ({steps})")


def _check_baseline_names(cfg: dict, where: str) -> None:
    """Refuses a baseline named like a masking scheme (their results would share a name)."""
    schemes = D.node("pretrain.schemes")["items"]["enum"] if cfg.get("baselines") else []
    for name in cfg.get("baselines") or {}:
        if name in schemes:
            raise GeneMaskError(f"{where}: key 'baselines.{name}': the name of a masking scheme; choose another")


def _check_corpus_lengths(cfg: dict, where: str) -> None:
    """Refuses corpus.min_bp below corpus.k, and corpus.max_bp below corpus.min_bp."""
    c = cfg["corpus"]
    if c["min_bp"] < c["k"]:
        raise GeneMaskError(f"{where}: key 'corpus.min_bp': must be >= corpus.k ({c['k']})")
    if c["max_bp"] < c["min_bp"]:
        raise GeneMaskError(f"{where}: key 'corpus.max_bp': must be >= corpus.min_bp ({c['min_bp']})")


def _check_ngram_order(cfg: dict, where: str) -> None:
    """Refuses a computed NPMI ranking whose ngrams.max_order is below corpus.k: it would not rank the k-mers."""
    k = cfg["corpus"]["k"]
    if cfg["npmi"]["ranking"] == "computed" and cfg["ngrams"]["max_order"] < k:
        raise GeneMaskError(f"{where}: key 'ngrams.max_order': must be >= corpus.k ({k}): the NPMI table "
                            f"ranks the k-mers the masking uses")


def _check_untrained_schemes(cfg: dict, where: str) -> None:
    """Refuses pretrain.settings.steps 0 with a trained scheme: an untrained model saved under its name."""
    trained = [s for s in cfg["pretrain"]["schemes"] if s != "none"]
    if cfg["pretrain"]["settings"].get("steps") == 0 and trained:
        raise GeneMaskError(f"{where}: key 'pretrain.settings.steps': 0 steps would save untrained models as "
                            f"{', '.join(trained)} (only scheme none is the untrained baseline)")


def finetune_setting(cfg: dict, key: str):
    """A fine-tuning setting as the job sees it: finetune.settings' value, else the schema default."""
    settings = cfg["finetune"].get("settings") or {}
    return settings[key] if key in settings else D.default(f"finetune.settings.{key}")


def _check_regimes(cfg: dict, where: str) -> None:
    """Refuses a shot run that no fine-tuning regime covers (finetune.select_regime's rule): the job
    would refuse it after pretraining, hours later."""
    maxima = [r.get("max_shot") for r in finetune_setting(cfg, "regimes")]
    if None in maxima:
        return
    for t in cfg["finetune"]["tasks"]:
        for shot in task_shots(cfg, t):
            if shot > max(maxima) and shot_source(cfg, t, shot) is not None:
                raise GeneMaskError(f"{where}: key 'finetune.settings.regimes': no regime covers shot {shot} of task "
                                    f"{t!r} (max_shot values {maxima}; null = any shot)")


def local_path(given: str, key: str) -> str:
    """A user's file path ($VARS and ~ expanded, a relative one against the working directory) made
    absolute; a missing file -> one line naming `key` (e.g. "config: key 'tasks.X.train'")."""
    p = os.path.abspath(os.path.expanduser(os.path.expandvars(given)))
    if not os.path.isfile(p):
        raise GeneMaskError(f"{key}: no such file {given!r} ({p}; relative paths resolve against the "
                            f"working directory {os.getcwd()})")
    return p


def _local_files(task: dict, where: str) -> None:
    """A local-file task's paths made absolute in place (`local_path`)."""
    for key in ("train", "test", "exclude"):
        if key not in task:
            continue
        if key == "exclude":
            task[key] = [local_path(g, f"{where}.{key}.{i}'") for i, g in enumerate(task[key])]
        else:
            task[key] = local_path(task[key], f"{where}.{key}'")


def is_local(cfg: dict, task: str) -> bool:
    """A task on local files (`train:` a labelled pool to draw the K-shot sets from) or a catalogued one."""
    return "train" in cfg["tasks"][task]


def task_shots(cfg: dict, task: str) -> list[int]:
    """K values run for a task: a local task's own `shots`, else finetune.shots (a list for every
    task, or a mapping task -> list; `resolve` refuses a mapping that omits a catalogued task)."""
    given = cfg["finetune"]["shots"]
    default = list(given.get(task, [])) if isinstance(given, dict) else list(given)
    if is_local(cfg, task):
        return list(cfg["tasks"][task].get("shots") or default)
    return default


def window(cfg: dict) -> tuple[int, int]:
    """(k, tokens) the fine-tuned model sees: the model's k and min(finetune max_length, its
    max_position_embeddings) minus [CLS]/[SEP] (default 512 - 2 = 510 tokens = 515 bp at k = 6)."""
    model = json.loads((ROOT / "resources" / "models" / f"{cfg['pretrain']['model']}.json").read_text())
    max_length = int(finetune_setting(cfg, "max_length"))
    max_len = min(max_length, int(model.get("max_position_embeddings", max_length)))
    return int(model.get("k", 6)), max_len - 2


def task_data_args(cfg: dict, task: str, shot: int) -> list[str]:
    """Options of `genemask task-data` beyond the files (the rule quotes each): the model window,
    and for a local task the draw."""
    k, tokens = window(cfg)
    t = cfg["tasks"][task]  # on_conflict / draw_seed: filled by `resolve` from the schema
    args = ["--k", str(k), "--window-tokens", str(tokens), "--on-conflict", str(t["on_conflict"])]
    if is_local(cfg, task):
        args += ["--draw", str(shot), "--draw-seed", str(t["draw_seed"]), "--label-names"]
    return args


TASK_DATA_MEM_PER_MB = 10  # task-data peaks at about 8x its input (every row held as Python strings + frames)


def task_data_mem_mb(cfg: dict, input_mb: float) -> int:
    """[MB] the task_data rule reserves: finetune.task_data_mem_mb, or more for large input files."""
    import math

    return max(int(cfg["finetune"]["task_data_mem_mb"]), math.ceil(TASK_DATA_MEM_PER_MB * input_mb) + 200)


TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")  # the workflow's {task} wildcard (common.smk); always fullmatch
MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def _check_names(cfg: dict, where: str) -> None:
    """Refuses unsafe names that become file names, wildcards or arguments (source urls and paths,
    genome contigs, pretrain.model): one line naming the key."""
    from .genome import CONTIG_NAME
    from .sources import check_relative_path, check_url

    for name, src in cfg["sources"].items():
        key = f"{where}: key 'sources.{name}"
        if src.get("url") is not None:
            check_url(src["url"], f"{key}.url'")
        check_relative_path(src["path"], f"{key}.path'", "results/sources (and the mirror folder)")
        if src.get("checksums"):
            check_url(src["checksums"]["url"], f"{key}.checksums.url'")
            check_relative_path(src["checksums"]["path"], f"{key}.checksums.path'", "the mirror folder")
    for contig in cfg["genome"]["contigs"]:
        if not CONTIG_NAME.fullmatch(str(contig)):
            raise GeneMaskError(f"{where}: key 'genome.contigs': {str(contig)!r} is not a legal contig name "
                                f"(SAM: no whitespace, quotes, brackets or commas, not starting with '*' or '=')")
    if not MODEL_NAME.fullmatch(cfg["pretrain"]["model"]):
        raise GeneMaskError(f"{where}: key 'pretrain.model': {cfg['pretrain']['model']!r} must be a file name "
                            f"stem of resources/models/ (letters, digits, '_', '-', '.')")


# What `resolve` checks after the schema, in this order (the first failing check is the error).
def explained_tasks(cfg: dict) -> list[str]:
    """explain.tasks that are fine-tuned (all of finetune.tasks when null; others are left out: a
    config that drops a task from fine-tuning drops its explanation too)."""
    given = cfg["explain"]["tasks"]
    return [t for t in cfg["finetune"]["tasks"] if given is None or t in given]


def _check_explain(cfg: dict, where: str) -> None:
    """Refuses a target class an explained task does not have."""
    e = cfg["explain"]
    for t in explained_tasks(cfg) if e["enabled"] else []:
        if e["target_class"] >= cfg["tasks"][t]["num_labels"]:
            raise GeneMaskError(f"{where}: key 'explain.target_class': {e['target_class']} is not a class of {t} "
                                f"({cfg['tasks'][t]['num_labels']} classes)")


TASK_CHECKS = (_check_task_known, _check_task_name, _check_max_test, _check_local_files, _check_task_sources,
               _check_task_shots)  # each of finetune.tasks in turn, by `_check_tasks`
CHECKS = (_check_genome_source, _check_tasks, _check_names, _check_model_file, _check_regimes, _check_eval_steps,
          _check_baseline_names, _check_corpus_lengths, _check_ngram_order, _check_untrained_schemes, _check_explain)


def check_config_files(paths: list[str]) -> dict:
    """`genemask check-config`: read config files as plain data (yaml.safe_load, as Snakemake merges
    several: later keys win, mappings merged) and resolve them, without Snakemake. Snakemake renders
    a config file with a top-level `__use_yte__: true` as a YTE template, evaluating its `?` values as
    Python; here that key is no config key, so such a file is refused before anything runs."""
    merged: dict = {}
    for p in paths:
        cfg = _load_yaml(Path(p))
        if not isinstance(cfg, dict):
            raise GeneMaskError(f"{p}: a config file is a mapping of keys, got {type(cfg).__name__}")
        if "__use_yte__" in cfg:
            raise GeneMaskError(f"{p}: key '__use_yte__': a YTE template (Snakemake evaluates its '?' values as "
                                f"Python code); GeneMask configs are plain YAML")
        _deep_update(merged, cfg)
    return resolve(merged, where=" + ".join(map(str, paths)))


def _deep_update(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _deep_update(a[k], v)
        else:
            a[k] = v


def chunks(cfg: dict) -> list[dict]:
    return plan_chunks(cfg["genome"]["contigs"], cfg["genome"]["chunk_size"])


def shot_source(cfg: dict, task: str, shot: int) -> str | None:
    """Source name of a catalogued task's K-shot file (None = not public); a local task's pool path."""
    if is_local(cfg, task):
        return cfg["tasks"][task]["train"] if shot in task_shots(cfg, task) else None
    shots = cfg["tasks"][task]["shots"]
    return shots.get(str(shot), shots.get(shot))


def section_resources(cfg: dict, section: str) -> dict:
    """threads, gpus, runtime_min and mem_mb of a section's jobs that the section has, each from the
    config, else from the schema (the predict section is not filled: its rules run only with it)."""
    given = cfg.get(section) or {}
    props = D.node(section).get("properties", {})
    return {k: given.get(k, props[k]["default"]) for k in ("threads", "gpus", "runtime_min", "mem_mb") if k in props}


def equivalence_margins(cfg: dict) -> dict[str, float]:
    """report.equivalence_margin with the schema's default for every metric it leaves out."""
    return {**D.defaults("report.equivalence_margin"), **(cfg["report"].get("equivalence_margin") or {})}


def pretrain_seeds(cfg: dict) -> list[int]:
    """Pretraining replicates: pretrain.seeds, else the one seed of pretrain.settings (default 42)."""
    return list(cfg["pretrain"].get("seeds") or [pretrain_setting(cfg, "seed")])


def pretrain_setting(cfg: dict, key: str):
    """A pretraining setting as the job sees it: pretrain.settings' value, else the schema default."""
    st = cfg["pretrain"]["settings"]
    return st[key] if key in st else D.default(f"pretrain.settings.{key}")


def pretrain_steps(cfg: dict) -> int:
    return int(pretrain_setting(cfg, "steps"))


def eval_steps(cfg: dict, scheme: str) -> list[int]:
    """The pretraining steps at which a scheme's runs are saved and fine-tuned (`none`: 0 only)."""
    if scheme == "none":
        return [0]
    return sorted(set(cfg["pretrain"].get("eval_steps") or []) | {pretrain_steps(cfg)})


def models(cfg: dict) -> list[dict]:
    """Every model that is fine-tuned: id (path below results/finetune/TASK/SHOT/), scheme,
    pretrain_seed, pretrain_step, and `run` (the pretraining run folder) or `baseline`."""
    out = []
    for scheme in cfg["pretrain"]["schemes"]:
        for ps in pretrain_seeds(cfg):
            for step in eval_steps(cfg, scheme):
                out.append({"id": f"{scheme}/seed{ps}/step{step}", "scheme": scheme, "pretrain_seed": ps,
                            "pretrain_step": step, "run": f"{scheme}/seed{ps}"})
    for name in cfg.get("baselines") or {}:
        out.append({"id": f"baseline/{name}", "scheme": name, "pretrain_seed": None, "pretrain_step": None,
                    "baseline": name})
    return out


def runs(cfg: dict) -> list[dict]:
    """Every fine-tuning run: task x shot (where a file exists) x model x fine-tuning seed."""
    out = []
    for t in cfg["finetune"]["tasks"]:
        for shot in task_shots(cfg, t):
            if shot_source(cfg, t, shot) is None:
                continue
            for m in models(cfg):
                for seed in cfg["finetune"]["seeds"]:
                    out.append({"task": t, "shot": shot, "scheme": m["scheme"], "seed": seed, "model": m["id"],
                                "pretrain_seed": m["pretrain_seed"], "pretrain_step": m["pretrain_step"]})
    return out


def probe_shots(cfg: dict, task: str) -> list[int]:
    """K values a task is probed at (probe.enabled): the shots fine-tuned that have a file, plus with
    probe.pool a catalogued task's largest K with a public file (its full training pool)."""
    shots = [s for s in task_shots(cfg, task) if shot_source(cfg, task, s) is not None]
    if cfg["probe"]["pool"] and not is_local(cfg, task):
        public = [int(k) for k, v in cfg["tasks"][task]["shots"].items() if v is not None]
        if public:
            shots.append(max(public))
    return sorted(set(shots))


def probes(cfg: dict) -> list[dict]:
    """Every probe job: task x model (plan.models), each covering probe_shots(task); none when disabled."""
    if not cfg["probe"]["enabled"]:
        return []
    return [{"task": t, "model": m["id"], "scheme": m["scheme"]} for t in cfg["finetune"]["tasks"]
            if probe_shots(cfg, t) for m in models(cfg)]


def explain_runs(cfg: dict) -> list[dict]:
    """The fine-tuning runs explained (explain.enabled): per explained task, its smallest shot with a
    file, the first fine-tuning seed, every scheme x pretraining seed at its largest saved step
    (external baselines left out); plan.runs' keys. None when disabled."""
    e = cfg["explain"]
    if not e["enabled"]:
        return []
    seed = cfg["finetune"]["seeds"][0]
    out = []
    for t in explained_tasks(cfg):
        shots = [s for s in task_shots(cfg, t) if shot_source(cfg, t, s) is not None]
        if not shots:
            continue
        for r in runs(cfg):
            if (r["task"] == t and r["shot"] == min(shots) and r["seed"] == seed and r["pretrain_step"] is not None
                    and r["pretrain_step"] == max(eval_steps(cfg, r["scheme"]))):
                out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# predict: the saved classifiers applied to the user's files (workflow/rules/predict.smk)
# ---------------------------------------------------------------------------------------------
RUN_KEYS = ("task", "shot", "model", "seed")  # a predict.models entry filters plan.runs on these
EMBED_FORMATS = {"parquet": ".parquet", "npy": ".npy"}


def _resolve_predict(cfg: dict, where: str) -> dict:
    """The predict section checked, its input paths absolute and its selections expanded: `runs`
    (the fine-tuning runs whose saved classifiers predict, plan.runs order) and `embed_models`."""
    from .inference import input_kind  # torch-free at import

    p = dict(cfg["predict"])
    inputs = {}
    for name, given in p["inputs"].items():
        key = f"{where}: key 'predict.inputs.{name}'"
        inputs[name] = local_path(given, key)
        try:
            input_kind(given)
        except GeneMaskError as e:
            raise GeneMaskError(f"{key}: {e}") from None
    p["inputs"] = inputs
    p["runs"] = _select_runs(cfg, p.get("models") or [], where)
    if p["runs"] and cfg["finetune"]["save"] != "all":
        raise GeneMaskError(f"{where}: key 'predict.models': needs finetune.save: all (a run keeps its fine-tuned "
                            f"classifier only then; turning it on reruns the runs that lack one)")
    if "embed" in p:
        e = dict(p["embed"] or {})
        known = [m["id"] for m in models(cfg)]
        given = e.get("models")
        if given == "all":
            chosen = known
        elif given is not None:
            for i, m in enumerate(given):
                if m not in known:
                    raise GeneMaskError(f"{where}: key 'predict.embed.models.{i}': unknown model {m!r} "
                                        f"(known: {', '.join(known)})")
            chosen = list(dict.fromkeys(given))
        else:  # the pretrained models behind the selected runs
            chosen = list(dict.fromkeys(r["model"] for r in p["runs"]))
            if not chosen:
                raise GeneMaskError(f"{where}: key 'predict.embed': no model to embed with: give "
                                    f"predict.embed.models or predict.models")
        p["embed"] = {**e, "models": chosen}
    elif not p["runs"]:
        raise GeneMaskError(f"{where}: key 'predict': nothing to do: give predict.models and/or predict.embed")
    return p


def _select_runs(cfg: dict, entries, where: str) -> list[dict]:
    """plan.runs selected by predict.models: "all", or a list of filters on task/shot/model/seed (an
    omitted key = any value); an entry matching no run -> one line naming its first unmatched key."""
    every = runs(cfg)
    if entries == "all":
        return every
    picked: set[int] = set()
    for i, entry in enumerate(entries):
        left, before = list(range(len(every))), []
        for key in RUN_KEYS:
            if key not in entry:
                continue
            match = [j for j in left if every[j][key] == entry[key]]
            if not match:
                have = ", ".join(map(str, sorted({every[j][key] for j in left}, key=str)))
                runs_ = f"the runs with its {'/'.join(before)}" if before else "the runs"
                raise GeneMaskError(f"{where}: key 'predict.models.{i}.{key}': {entry[key]!r} matches no fine-tuning "
                                    f"run ({runs_} have {key} {have})")
            left = match
            before.append(key)
        picked.update(left)
    return [every[j] for j in sorted(picked)]


def predict_runs(cfg: dict) -> list[dict]:
    """The runs whose saved classifiers `predict` applies ([] without a predict section)."""
    return (cfg.get("predict") or {}).get("runs", [])


def predict_inputs(cfg: dict) -> dict[str, str]:
    """predict.inputs: name -> absolute path ({} without a predict section)."""
    return (cfg.get("predict") or {}).get("inputs", {})


def embed_models(cfg: dict) -> list[str]:
    """Model ids (plan.models) whose pretrained encoder embeds every input ([] without predict.embed)."""
    return ((cfg.get("predict") or {}).get("embed") or {}).get("models", [])


def embed_ext(cfg: dict) -> str:
    """Suffix of the embedding files: .parquet (default) or .npy (predict.embed.format)."""
    return EMBED_FORMATS[((cfg.get("predict") or {}).get("embed") or {}).get("format", D.default("predict.embed.format"))]


def apply_args(cfg: dict, command: str) -> list[str]:
    """Options of `genemask predict` / `genemask embed` from the predict section, as separate words
    (for Snakemake's `:q`): only the keys given, so the CLI's own defaults hold otherwise."""
    p = cfg.get("predict") or {}
    opts = {"stride": p.get("stride"), "batch-size": p.get("batch_size"), "device": p.get("device"),
            "bf16": p.get("bf16")}
    if command == "embed":
        e = p.get("embed") or {}
        opts.update({"pooling": e.get("pooling"), "layer": e.get("layer")})
    return [w for k, v in opts.items() if v is not None  # YAML's true/false -> --bf16 true/false
            for w in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]


def missing(cfg: dict) -> list[dict]:
    """Task x shot combinations asked for in the config whose training file is not public."""
    return [{"task": t, "shot": s, "reason": "no public training file (null in the task catalogue)"}
            for t in cfg["finetune"]["tasks"] for s in task_shots(cfg, t) if shot_source(cfg, t, s) is None]


def write_missing(entries: list[str], output: str) -> None:
    """Write missing.tsv (task, shot, reason) from TASK:SHOT entries, for the report."""
    from .util import atomic_output

    with atomic_output(output) as tmp, open(tmp, "w") as fh:
        fh.write("task\tshot\treason\n")
        for e in entries:
            task, _, shot = e.rpartition(":")
            fh.write(f"{task}\t{shot}\tno public training file (null in the task catalogue)\n")
