"""Put the cluster's Ray auth token where ``ray start`` looks for it, on an AWS node.

``cluster.yaml`` runs this in every node's container (setup_commands), before Ray starts with
``RAY_AUTH_MODE=token``. The token is an SSM Parameter Store SecureString, read with the
node's instance role (``ssm:GetParameter`` on that one parameter) and written to Ray's default
token file, ``~/.ray/auth_token``, readable by this user only. It never passes through the
command line, the environment, the repository or the cluster file, and is never printed.

    python cluster/ray_auth_token.py [--parameter /cxrkd/ray-auth-token] [--out PATH]

The region is the node's own (from the instance metadata service) unless ``--region`` or the
usual AWS_REGION / AWS_DEFAULT_REGION says otherwise: create the parameter in the cluster's
region (README, "Before the first launch").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

DEFAULT_PARAMETER = "/cxrkd/ray-auth-token"
DEFAULT_OUT = "~/.ray/auth_token"  # Ray's default token path (RAY_AUTH_TOKEN_PATH unset)


def region(explicit: str | None) -> str:
    if explicit:
        return explicit
    import boto3
    from botocore.utils import InstanceMetadataRegionFetcher

    found = boto3.session.Session().region_name or InstanceMetadataRegionFetcher().retrieve_region()
    if not found:
        raise SystemExit("ray_auth_token: no AWS region (not on EC2?); pass --region")
    return found


def fetch(parameter: str, region_name: str) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("ssm", region_name=region_name)
    try:
        value = client.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    except (BotoCoreError, ClientError) as e:
        # The error names the parameter and the refused action, never a value.
        raise SystemExit(f"ray_auth_token: cannot read SSM parameter {parameter}: {e}") from None
    token = value.strip()
    if not token:
        raise SystemExit(f"ray_auth_token: SSM parameter {parameter} is empty")
    return token


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (never a half-written token)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameter", default=DEFAULT_PARAMETER, help="SSM parameter name")
    parser.add_argument("--out", default=DEFAULT_OUT, help="token file (default: Ray's)")
    parser.add_argument("--region", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    write_private(out, fetch(args.parameter, region(args.region)))
    print(f"ray_auth_token: wrote {out} from SSM parameter {args.parameter}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
