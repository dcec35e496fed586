#!/usr/bin/env python3
"""Runs a buildspec.yml (version 0.2) the way AWS CodeBuild does, for scripts/test-buildspec.sh.

    run-buildspec.py BUILDSPEC [--secret NAME=VALUE]...

The current directory is the source (CODEBUILD_SRC_DIR). Phases install, pre_build, build and
post_build run in that order; each command runs in bash with the environment variables and the
working directory the previous command left (as CodeBuild persists them in version 0.2), and
CodeBuild's phase transitions apply: a failure in install or pre_build ends the build, a failure in
build still runs post_build with CODEBUILD_BUILD_SUCCEEDING=0, and any failed phase fails the build.

The environment: the caller's PATH, HOME and LANG, every CODEBUILD_*, AWS_* and STANDIN_* variable
of the caller (what the CodeBuild project and the stand-ins provide), the buildspec's
`env.variables` (project variables of the same name win, as in CodeBuild), and one --secret for
each name in `env.parameter-store` and `env.secrets-manager`: a buildspec that asks for a secret the
caller does not stand in for fails here, as it would in CodeBuild.

Exit status 0 when the build succeeded, 1 when it failed; 2 for a buildspec this runner does not
understand (it refuses what it cannot imitate rather than skip it).
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import yaml

PHASES = ["install", "pre_build", "build", "post_build"]
ENV_KEYS = {"shell", "variables", "parameter-store", "secrets-manager", "exported-variables"}
PASSED_THROUGH = ("CODEBUILD_", "AWS_", "STANDIN_")
COMMAND_TIMEOUT_S = 120

# Restores the previous command's state, runs this one, saves the state for the next.
WRAPPER = r"""
. "$1"
. "$2"
__status=$?
{ export -p; printf 'cd -- %q\n' "$PWD"; } >"$1"
exit $__status
"""


def say(message):
    print(f"[Container] {message}", flush=True)


def refuse(message):
    print(f"run-buildspec: {message}", file=sys.stderr)
    sys.exit(2)


def initial_env(spec_env, secrets):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG") or k.startswith(PASSED_THROUGH)}
    for name, value in (spec_env.get("variables") or {}).items():
        env.setdefault(name, str(value))
    for section in ("parameter-store", "secrets-manager"):
        for name, reference in (spec_env.get(section) or {}).items():
            if name not in secrets:
                refuse(f"the buildspec reads {name} from {section} ({reference}); pass --secret {name}=...")
            env[name] = secrets[name]
    env["CODEBUILD_BUILD_SUCCEEDING"] = "1"
    env["CODEBUILD_SRC_DIR"] = os.getcwd()
    return env


def run_command(command, state, workdir):
    script = os.path.join(workdir, "command.sh")
    with open(script, "w") as f:
        f.write(command)
    say(f"Running command {command.strip()}")
    try:
        # No inherited environment: everything comes from the state file.
        done = subprocess.run(["bash", "-c", WRAPPER, "wrapper", state, script], env={}, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        say(f"Command timed out after {COMMAND_TIMEOUT_S}s")
        return False
    if done.returncode != 0:
        say(f"Command did not exit successfully {command.strip()} exit status {done.returncode}")
    return done.returncode == 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("buildspec")
    parser.add_argument("--secret", action="append", default=[], help="NAME=VALUE standing in for a stored secret")
    args = parser.parse_args()
    secrets = dict(s.split("=", 1) for s in args.secret)

    with open(args.buildspec) as f:
        spec = yaml.safe_load(f)
    if str(spec.get("version")) != "0.2":
        refuse(f"buildspec version {spec.get('version')!r}: only 0.2 is imitated")
    spec_env = spec.get("env") or {}
    if set(spec_env) - ENV_KEYS:
        refuse(f"env keys not imitated: {sorted(set(spec_env) - ENV_KEYS)}")
    if spec_env.get("shell", "bash") != "bash":
        refuse("only `shell: bash` is imitated")
    phases = spec.get("phases") or {}
    if set(phases) - set(PHASES):
        refuse(f"unknown phases: {sorted(set(phases) - set(PHASES))}")
    for name, phase in phases.items():
        if set(phase) - {"commands"}:
            refuse(f"phase {name}: keys not imitated: {sorted(set(phase) - {'commands'})}")

    env = initial_env(spec_env, secrets)
    with tempfile.TemporaryDirectory(prefix="buildspec-") as workdir:
        state = os.path.join(workdir, "state.sh")
        with open(state, "w") as f:
            for name, value in env.items():
                f.write(f"export {name}={shlex.quote(value)}\n")
            f.write(f"cd -- {shlex.quote(os.getcwd())}\n")

        failed_phase = None
        for name in PHASES:
            if failed_phase in ("install", "pre_build"):
                break  # CodeBuild goes straight to FINALIZING; only a failed build runs post_build
            say(f"Entering phase {name.upper()}")
            ok = True
            for command in (phases.get(name) or {}).get("commands") or []:
                if not run_command(command, state, workdir):
                    ok = False
                    break  # the rest of the phase is skipped
            say(f"Phase complete: {name.upper()} State: {'SUCCEEDED' if ok else 'FAILED'}")
            if not ok and failed_phase is None:
                failed_phase = name
                with open(state, "a") as f:
                    f.write("export CODEBUILD_BUILD_SUCCEEDING=0\n")

        # What the build hands on (CodePipeline reads these), as CodeBuild reports them.
        exported = spec_env.get("exported-variables") or []
        show = 'cd / && . "$1" && shift && for name; do printf "%s=%s\\n" "$name" "${!name}"; done'
        done = subprocess.run(["bash", "-c", show, "show", state, *exported], env={}, capture_output=True, text=True)
        for line in done.stdout.splitlines():
            say(f"Exported variable {line}")

    succeeded = failed_phase is None
    say(f"Build {'SUCCEEDED' if succeeded else 'FAILED'}")
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
