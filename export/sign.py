"""``edge-export keygen`` and ``edge-export sign``: the ML team's side of signed packs.

``keygen --out DIR`` writes an Ed25519 key pair (private key mode 0600); ``sign PACK --key
PRIVATE`` loads and verifies the pack (seal and every sha256: a pack that does not load is
never signed) and writes ``PACK/signature.json`` over its digest (edge_worker.packs.signing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keygen`` and ``sign`` subcommands to ``edge-export``."""
    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair for signing packs")
    keygen.add_argument("--out", type=Path, required=True, help="folder for NAME.key and NAME.pub")
    keygen.add_argument("--name", default="pack-signing", help="file name stem (default pack-signing)")
    sign = sub.add_parser("sign", help="sign a pack's digest (writes PACK/signature.json)")
    sign.add_argument("pack", type=Path, help="pack folder")
    sign.add_argument("--key", type=Path, required=True, help="private key from keygen")


def run_keygen(args: argparse.Namespace) -> int:
    """Write the key pair; returns the exit status (1 when the private key already exists)."""
    from edge_worker.packs.signing import generate_keys, key_id, load_public_key

    try:
        private, public = generate_keys(args.out, args.name)
    except FileExistsError:
        print(f"edge-export: {args.out / (args.name + '.key')} exists; not replaced", file=sys.stderr)
        return 1
    print(f"private key {private} (keep it secret), public key {public}, "
          f"key id {key_id(load_public_key(public))}")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """Verify the pack and write its signature; returns the exit status."""
    from edge_worker.errors import PackError
    from edge_worker.packs.pack import load_pack
    from edge_worker.packs.signing import load_private_key, sign_digest, write_signature

    try:
        key = load_private_key(args.key)
        pack = load_pack(args.pack)
    except (OSError, ValueError, PackError) as exc:
        print(f"edge-export: {exc}", file=sys.stderr)
        return 1
    record = sign_digest(pack.digest, key)
    path = write_signature(args.pack, record)
    print(f"{path}: pack {pack.name} {pack.version} digest {pack.digest} signed by key {record['key_id']}")
    return 0
