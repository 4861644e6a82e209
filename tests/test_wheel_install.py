"""A non-editable install runs the demo and the bench from an empty directory (issue 18: a wheel once
looked for its default prompt in the checkout's experiments/).

The project is built from a copy of the checkout (so nothing can reach back into it) and installed, not
editable, into a fresh venv. Its dependencies (torch, petals, ...) are not installed again: a .pth file
makes this interpreter's site-packages visible behind the fresh venv's own, so the fresh venv's
petals_ops is the one imported (checked) and only the dependencies come from the dev venv.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Build outputs, caches and run dirs of a working checkout: not part of what `pip install .` needs.
NOT_SOURCE = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "runs", "bench-runs", "shared",
              ".pytest_cache", ".ruff_cache", "node_modules")


def run(argv, *, cwd, env, timeout):
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{argv}: rc {result.returncode}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # `pip install .` in two steps, with this interpreter's pip and setuptools (no index needed): build the
    # wheel, then install it into the fresh venv (--python); --no-deps: they come through the .pth below
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", base / "dist", src], cwd=base, env=env, timeout=600)
    (wheel,) = (base / "dist").glob("petals_ops-*.whl")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
         wheel], cwd=base, env=env, timeout=600)
    fresh_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          cwd=base, env=env, timeout=60).stdout.strip())
    dev_sites = {sysconfig.get_path(kind, vars={"base": sys.prefix, "platbase": sys.prefix})
                 for kind in ("purelib", "platlib")}
    (fresh_site / "zz_dev_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(dev_sites)))
    shutil.rmtree(src)  # the install must not need its source any more
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env, fresh_site


def test_wheel_install_imports_its_own_copy(wheel_venv, tmp_path):
    venv, env, fresh_site = wheel_venv
    shown = run([venv / "bin" / "python", "-c", "import petals_ops, sys; print(petals_ops.__file__)"],
                cwd=tmp_path, env=env, timeout=60).stdout.strip()
    assert Path(shown).resolve().is_relative_to(fresh_site.resolve()), shown
    assert not Path(shown).resolve().is_relative_to(ROOT), shown


def test_wheel_install_runs_demo_and_bench_from_an_empty_directory(wheel_venv, tmp_path):
    venv, env, _ = wheel_venv
    cli = venv / "bin" / "petals-ops"
    empty = tmp_path / "empty"
    empty.mkdir()
    demo = run([cli, "demo"], cwd=empty, env=env, timeout=1200)
    assert "== local swarm down" in demo.stderr and "report: " in demo.stdout
    assert (empty / "runs" / "demo" / "bench" / "report" / "report.md").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bench = run([cli, "bench", "gsm8k", "--data", "gsm8k:test", "--backend", "local", "--limit", "1"],
                cwd=elsewhere, env=env, timeout=600)
    assert "report: " in bench.stdout, bench.stdout
    assert (elsewhere / "bench-runs" / "gsm8k-cot" / "records.jsonl").read_text().count("\n") == 1
    # the default prompt is the packaged one, wherever the command runs
    config = (elsewhere / "bench-runs" / "gsm8k-cot" / "config.json").read_text()
    assert "gsm8k_cot_8shot_petals_ops@" in config and '"source": "gsm8k:test"' in config
