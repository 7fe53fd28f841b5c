"""Mutation testing of the modules whose bugs change numbers silently (issue 22): `make mutation`.

For each module, mutmut (3.8) mutates that one file in a scratch copy of the repository
(``benchmarks/mutation/_work/<module>/``; the working tree is never touched) and runs only that
module's tests against each mutant (``-x``, forked from a warmed-up server). A mutant is *killed*
when a test fails (or it times out), *survives* when they all pass, and has *no tests* when none of
the selected tests executes the mutated function (a survivor too: nothing would notice).

Kill rates are reported per module over all mutants, and over the *numeric* mutants: those outside
error and log messages. A mutant is a *message* mutant when the mutated node sits inside a ``raise``,
a logging call, a ``warnings.warn`` / ``.append`` of a warning, or an f-string / string argument of
an exception (``ConfigError(...)``): it changes what a message says, never a number a user gets.
Those are judged en bloc ("message text"); the goal (>= 85% killed) is on the numeric ones.

Every surviving numeric mutant is listed with its diff in ``results/<module>.md`` and must carry a
one-line judgement in ``judgements.toml`` (equivalent mutant, or the test that now kills it); the
report marks the ones without as UNJUDGED.

A run samples ``--sample`` mutants per module (seeded; 0 = all) and stops a module after
``--time-box`` seconds; mutants not reached are "not checked" and left out of the rates. The SQL
mutation set (``sql_mutants.py``) runs after the Python modules.

Usage::

    python benchmarks/mutation/run.py                      # every module, default sample and time box
    python benchmarks/mutation/run.py --modules feedback_etl/privacy.py --sample 0
    python benchmarks/mutation/run.py --sql-only
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results"
PYTHON = sys.executable
MUTMUT = str(Path(PYTHON).with_name("mutmut"))

# Module -> the tests that guard it (only these run against its mutants). Slow end-to-end tests
# are included only where they are the module's guard.
PRIVACY_SCAN = "tests/feedback_etl/test_privacy_scan.py::"
DELTA = "tests/feedback_etl/test_warehouse_delta.py::"
PRIVACY_INGEST = "tests/feedback_etl/test_privacy_ingest.py::"
MODULES: dict[str, list[str]] = {
    "rm_train/losses.py": ["tests/rm_train/test_losses.py"],
    "propensity/models/crossfit.py": ["tests/propensity/test_crossfit.py", "tests/propensity/test_crossfit_mutants.py"],
    "propensity/models/calibration.py": ["tests/propensity/test_crossfit.py", "tests/propensity/test_fit.py",
                                         "tests/propensity/test_floor.py"],
    "propensity/weights/export.py": ["tests/propensity/test_export.py", "tests/propensity/test_export_streamed.py",
                                     "tests/propensity/test_export_mutants.py"] + ["tests/propensity/test_trl_pairs.py::" + name for name in (
        "test_trl_pairs_carry_the_template_separator", "test_trl_pairs_refuse_pairs_without_text", "test_pairs_format_needs_pairs")],
    "propensity/weights/_stream.py": ["tests/propensity/test_export_streamed.py",  # the streamed export's inputs (issue 23)
                                      "tests/propensity/test_streamed_chain.py::test_streamed_export_of_label_aware_weights_equals_the_in_memory_one"],
    "feedback_etl/privacy.py": ["tests/feedback_etl/test_privacy.py"] + [PRIVACY_SCAN + name for name in (
        "test_the_fixture_rejects_impressions_that_carry_ids_and_text",
        "test_scan_finds_ids_and_texts_in_every_table_of_a_plain_warehouse",
        "test_private_warehouse_holds_no_raw_id_text_or_key")] + [PRIVACY_INGEST + name for name in (
        "test_redaction_counts_on_planted_examples", "test_text_modes_in_the_warehouse")],
    "propensity/noise/_proxy.py": ["tests/propensity/test_noise_accuracy.py", "tests/propensity/test_noise.py",
                                   "tests/propensity/test_noise_mutants.py"],
    "propensity/noise/estimate.py": ["tests/propensity/test_noise.py", "tests/propensity/test_noise_accuracy.py",
                                     "tests/propensity/test_noise_mutants.py"],
    "feedback_etl/warehouse.py": ["tests/feedback_etl/test_warehouse_commit.py", "tests/feedback_etl/test_warehouse_mutants.py"] + [
        DELTA + name for name in (
        "test_time_travel_returns_the_exact_earlier_rows", "test_history_and_vacuum",
        "test_a_first_run_killed_before_its_manifest_leaves_no_table_to_read",
        "test_two_writers_at_once_are_serialised_by_the_lock",
        "test_an_old_parquet_folder_warehouse_is_refused_then_migrated")],
    "propensity/slice/label_aware.py": ["tests/propensity/test_label_aware.py", "tests/propensity/test_label_aware_mutants.py"] + [
        "tests/propensity/test_streamed_chain.py::" + name for name in (  # the streamed fit (issue 23)
            "test_streamed_label_aware_fit_equals_the_in_memory_fit", "test_streamed_fit_refuses_what_it_does_not_cover")],
}
COPY = ["feedback_etl", "propensity", "rm_train", "schemas", "sql", "tests", "examples", "docs", "conftest.py", "cli.py",
        "pyproject.toml", "README.md", "Makefile"]
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not checked", 34: "skipped",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "warn"}


# ------------------------------------------------------------------------ scratch copy and mutmut


def _slug(module: str) -> str:
    return module.replace("/", "_").removesuffix(".py")


def prepare(module: str, tests: list[str], from_head: tuple[str, ...] = ()) -> Path:
    """A scratch copy of the repository with mutmut configured for one module.

    ``from_head``: files taken as last committed instead of from the working tree (another
    change in progress that breaks the module's tests, say)."""
    work = WORK / _slug(module)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "_work", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPY:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, work / name)
    for name in from_head:
        committed = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
        (work / name).write_bytes(committed)
    config = {
        "source_paths": ["feedback_etl", "propensity", "rm_train", "schemas"],
        "only_mutate": [module],
        "also_copy": ["sql", "cli.py", "conftest.py", "examples", "docs", "README.md", "Makefile"],
        # Forked from a server that imported nothing of the tests' state: polars, LightGBM and
        # torch thread pools are not fork-safe once used.
        "process_isolation": "forkserver",
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:randomly", "-p", "no:cacheprovider"],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    with open(work / "pyproject.toml", "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread each: the machine is shared, and forked workers must not inherit busy pools.
    env.update(POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", CI="true")
    env.pop("MUTANT_UNDER_TEST", None)
    return env


def generate(work: Path) -> list[str]:
    """Generate the mutants (mutmut's own generator, no test run) and return their names."""
    code = (
        "from mutmut.__main__ import copy_src_dir, copy_also_copy_files, setup_source_paths, create_mutants\n"
        "from mutmut.configuration import config\n"
        "import os\n"
        "os.makedirs('mutants', exist_ok=True)\n"
        "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)\n"
    )
    subprocess.run([PYTHON, "-c", code], cwd=work, env=_env(), check=True, capture_output=True, text=True)
    names: list[str] = []
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        names += list(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return names


def run_mutants(work: Path, names: list[str], time_box: float) -> str:
    """Run mutmut on the given mutants, stopping after ``time_box`` seconds (results so far are kept)."""
    command = ["nice", "-n", "15", MUTMUT, "run", "--max-children", "1", *names]
    with open(work / "mutmut.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=time_box)
            return "finished"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
            return "time box reached"


def read_results(work: Path) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return codes


# ------------------------------------------------------------------------ message vs numeric mutants


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _first_difference(a: ast.AST, b: ast.AST, path: list[ast.AST]) -> list[ast.AST] | None:
    """Ancestors (outermost first) of the first node where two trees differ, or None."""
    if type(a) is not type(b):
        return path + [a]
    for name, value_a in ast.iter_fields(a):
        value_b = getattr(b, name, None)
        if isinstance(value_a, ast.AST):
            if not isinstance(value_b, ast.AST):
                return path + [a]
            found = _first_difference(value_a, value_b, path + [a])
            if found:
                return found
        elif isinstance(value_a, list):
            if not isinstance(value_b, list) or len(value_a) != len(value_b):
                return path + [a]
            for item_a, item_b in zip(value_a, value_b):
                if isinstance(item_a, ast.AST):
                    found = _first_difference(item_a, item_b, path + [a])
                    if found:
                        return found
                elif item_a != item_b:
                    return path + [a]
        elif name not in ("lineno", "col_offset", "end_lineno", "end_col_offset", "ctx", "type_comment") and value_a != value_b:
            return path + [a]
    return None


def _is_message_context(node: ast.AST) -> bool:
    if isinstance(node, ast.Raise):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        if name in LOG_METHODS and owner in ("log", "logging", "logger", "warnings"):
            return True
        if name.endswith("Error") or name.endswith("Warning"):
            return True
        if name == "append" and "warning" in owner:
            return True
    return False


def classify(work: Path, module: str, names: list[str]) -> dict[str, str]:
    """'message' or 'numeric' for every mutant name of the module (from the mutated file's AST)."""
    functions = _functions(work / "mutants" / module)
    kinds = {}
    for name in names:
        local = name.rsplit(".", 1)[-1] if "ǁ" not in name else "xǁ" + name.split("xǁ", 1)[1]
        base, _, number = local.rpartition("__mutmut_")
        mutant, original = functions.get(local), functions.get(f"{base}__mutmut_orig")
        if mutant is None or original is None:
            kinds[name] = "numeric"
            continue
        mutant.name = original.name  # the names always differ
        path = _first_difference(original, mutant, []) or []
        mutant.name = local
        kinds[name] = "message" if any(_is_message_context(n) for n in path) else "numeric"
    return kinds


def show(work: Path, name: str) -> str:
    done = subprocess.run([MUTMUT, "show", name], cwd=work, env=_env(), capture_output=True, text=True, timeout=120)
    return done.stdout.strip()


# ------------------------------------------------------------------------ report


@dataclass
class ModuleResult:
    module: str
    tests: list[str]
    mutants: int
    sampled: int
    outcome: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    survivors: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # When it was measured and on which code: HEAD plus a hash of the mutated file as it was
    # (other work may have changed it since the last commit).
    measured: str = ""
    code: str = ""
    seed: int | None = None

    def rate(self, kind: str) -> tuple[float, int, int]:
        c = self.counts.get(kind, {})
        killed = c.get("killed", 0) + c.get("timeout", 0) + c.get("segfault", 0)
        checked = killed + c.get("survived", 0) + c.get("no tests", 0) + c.get("suspicious", 0)
        return (killed / checked if checked else math.nan), killed, checked


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_judgements() -> dict[str, str]:
    path = HERE / "judgements.toml"
    if not path.exists():
        return {}
    return {k: v for section in tomllib.loads(path.read_text(encoding="utf-8")).values() for k, v in section.items()}


def run_module(module: str, tests: list[str], *, sample: int, time_box: float, seed: int,
               from_head: tuple[str, ...] = ()) -> ModuleResult:
    started = time.monotonic()
    work = prepare(module, tests, from_head)
    names = generate(work)
    chosen = sorted(random.Random(f"{seed}:{module}").sample(names, sample)) if 0 < sample < len(names) else names
    print(f"{module}: {len(names)} mutants, running {len(chosen)} against {', '.join(tests)}", flush=True)
    outcome = run_mutants(work, chosen, time_box)
    if "failed to collect stats" in (work / "mutmut.log").read_text(encoding="utf-8", errors="replace"):
        outcome = "NOT RUN: the module's tests fail on the unmutated code (see _work/<module>/mutmut.log)"
    codes = read_results(work)
    kinds = classify(work, module, chosen)
    result = ModuleResult(module, tests, len(names), len(chosen), outcome,
                          measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), code=_code_version(module) + (f"; as committed: {', '.join(Path(f).name for f in from_head)}" if from_head else ""),
                          seed=seed)
    judgements = load_judgements()
    for name in chosen:
        status = STATUS.get(codes.get(name), "suspicious")
        bucket = result.counts.setdefault(kinds[name], {})
        bucket[status] = bucket.get(status, 0) + 1
        if status in ("survived", "no tests", "suspicious"):
            result.survivors.append({"name": name, "status": status, "kind": kinds[name],
                                     "judgement": judgements.get(name, "message text: changes what an error or log line says, not a number"
                                                                 if kinds[name] == "message" else "UNJUDGED"),
                                     "diff": show(work, name) if kinds[name] == "numeric" else ""})
    result.seconds = time.monotonic() - started
    return result


def _code_version(module: str) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", module], cwd=ROOT).returncode != 0
    digest = hashlib.sha256((ROOT / module).read_bytes()).hexdigest()[:10]
    return f"{head}{' + uncommitted edits' if dirty else ''} (file sha256 {digest})"


def judged_rate(result: ModuleResult) -> tuple[int, int]:
    """(killed, checked) over numeric mutants once the survivors' judgements count: a survivor
    judged "test added ...", "killed outside ..." or "killed by ..." (each checked by hand: the mutant applied,
    the test red) counts as killed, an "equivalent" one leaves the denominator, any other
    (a gap left, metadata, an error path) stays a survivor."""
    _, killed, checked = result.rate("numeric")
    for s in result.survivors:
        if s["kind"] != "numeric":
            continue
        judgement = s["judgement"]
        if judgement.startswith(("test added", "killed outside", "killed by")):
            killed += 1
        elif judgement.startswith(("equivalent", "likely equivalent")):
            checked -= 1
    return killed, checked


def write_report(results: list[ModuleResult], sql: list[dict] | None, args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Mutation testing results", "",
             f"`python benchmarks/mutation/run.py --sample {args.sample} --time-box {args.time_box:g} --seed {args.seed}` "
             f"(report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; a run of some modules keeps the others' "
             "last rows, see *measured on*). Killed = a selected test failed or timed out; "
             "rates over checked mutants (survived and no-tests count against). 95% Wilson interval from the sample.", "",
             "| module | mutants | sampled | numeric killed | numeric rate (95% CI) | all killed | all rate | after judgements | run | measured on |",
             "|---|---:|---:|---:|---|---:|---:|---|---|---|"]
    for r in results:
        rate, killed, checked = r.rate("numeric")
        lo, hi = wilson(killed, checked)
        all_killed = sum(r.rate(k)[1] for k in ("numeric", "message"))
        all_checked = sum(r.rate(k)[2] for k in ("numeric", "message"))
        all_rate = all_killed / all_checked if all_checked else math.nan
        j_killed, j_checked = judged_rate(r)
        judged = f"{j_killed}/{j_checked} ({j_killed / j_checked:.0%})" if j_checked else "-"
        lines.append(f"| `{r.module}` | {r.mutants} | {r.sampled} | {killed}/{checked} | {rate:.0%} ({lo:.0%}-{hi:.0%}) | "
                     f"{all_killed}/{all_checked} | {all_rate:.0%} | {judged} | {r.outcome}, {r.seconds / 60:.0f} min | "
                     f"{r.measured or '-'}, {r.code or '-'}, seed {args.seed if r.seed is None else r.seed} |")
        detail = [f"# Survivors: `{r.module}`", "", f"Tests: {', '.join(f'`{t}`' for t in r.tests)}", ""]
        for s in r.survivors:
            detail += [f"## `{s['name']}` ({s['status']}, {s['kind']})", "", f"Judgement: {s['judgement']}", ""]
            if s["diff"]:
                detail += ["```diff", s["diff"], "```", ""]
        (RESULTS / f"{_slug(r.module)}.md").write_text("\n".join(detail) + "\n", encoding="utf-8")
    if sql is not None:
        caught = sum(m["caught"] for m in sql)
        lines += ["", f"## SQL mutation set: {caught}/{len(sql)} caught", "", "| file | mutant | caught |", "|---|---|---|"]
        lines += [f"| `{m['file']}` | {m['description']} | {'yes' if m['caught'] else '**no**'} |" for m in sql]
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = {"python": [{**r.__dict__, "survivors": [{k: v for k, v in s.items() if k != "diff"} for s in r.survivors]} for r in results],
               "sql": sql, "args": {"sample": args.sample, "time_box": args.time_box, "seed": args.seed}}
    (RESULTS / "summary.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


def load_previous() -> tuple[list[ModuleResult], list[dict] | None, dict]:
    """The last report's module results (with the current judgements), SQL set and arguments."""
    path = RESULTS / "summary.json"
    if not path.exists():
        return [], None, {}
    payload = json.loads(path.read_text(encoding="utf-8"))
    judgements = load_judgements()
    diffs = {}
    for md in RESULTS.glob("*.md"):
        for block in md.read_text(encoding="utf-8").split("\n## `")[1:]:
            name = block.split("`", 1)[0]
            if "```diff" in block:
                diffs[name] = block.split("```diff\n", 1)[1].split("\n```", 1)[0]
    results = []
    keys = ("module", "tests", "mutants", "sampled", "outcome", "counts", "seconds", "measured", "code", "seed")
    for item in payload["python"]:
        result = ModuleResult(**{k: item[k] for k in keys if k in item})
        for s in item["survivors"]:
            judgement = judgements.get(s["name"], s["judgement"] if s["kind"] == "message" else "UNJUDGED")
            result.survivors.append({**s, "judgement": judgement, "diff": diffs.get(s["name"], "")})
        results.append(result)
    return results, payload.get("sql"), payload.get("args") or {}


def report_only(args: argparse.Namespace) -> int:
    """Rebuild results/ from the last run's summary.json and the current judgements.toml."""
    results, sql, run_args = load_previous()
    for key in ("sample", "time_box", "seed"):
        setattr(args, key, run_args.get(key, getattr(args, key)))
    write_report(results, sql, args)
    return 0


def main() -> int:
    global RESULTS  # noqa: PLW0603 - one report folder per process
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="*", default=list(MODULES), help="modules to mutate (default: all of MODULES)")
    parser.add_argument("--sample", type=int, default=30, help="mutants sampled per module (0 = all)")
    parser.add_argument("--time-box", type=float, default=330, help="seconds per module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sql-only", action="store_true")
    parser.add_argument("--no-sql", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report of the last run with the current judgements")
    parser.add_argument("--from-head", nargs="*", default=[],
                        help="files copied as committed (HEAD) instead of from the working tree, e.g. another change in progress")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="report folder (default results/; e.g. results/seed1 for a fresh sample that tests were not written against)")
    args = parser.parse_args()
    RESULTS = args.results.resolve()
    if args.report_only:
        return report_only(args)
    # A run of some modules keeps the other modules' last rows (and the last SQL set), so that
    # modules can be measured one at a time.
    previous, sql, _ = load_previous()
    kept = {r.module: r for r in previous if r.module in MODULES}
    results = []
    if not args.sql_only:
        for module in args.modules:
            result = run_module(module, MODULES[module], sample=args.sample, time_box=args.time_box, seed=args.seed,
                                from_head=tuple(args.from_head))
            results.append(result)
            kept[module] = result
            write_report([kept[m] for m in MODULES if m in kept], sql, args)
    if not args.no_sql:
        sys.path.insert(0, str(HERE))
        from sql_mutants import run_sql_mutants

        sql = run_sql_mutants()
    write_report([kept[m] for m in MODULES if m in kept], sql, args)
    missed_sql = sql is not None and not all(m["caught"] for m in sql)
    low = [r.module for r in results if not r.rate("numeric")[0] >= 0.85]
    if low:
        print(f"below 85% numeric kill rate: {', '.join(low)}")
    return 1 if (low or missed_sql) else 0


if __name__ == "__main__":
    raise SystemExit(main())
