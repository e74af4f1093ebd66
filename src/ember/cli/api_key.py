"""``ember api-key``: make an API key for the control plane (``create``), or list them (``list``)."""

from __future__ import annotations

import argparse
import asyncio

from ember.api import DEFAULT_DB_URL, open_store
from ember.api.auth import add_api_key
from ember.cli.flags import FlagParser

SUMMARY = "create an API key of the control plane (printed once) or list the keys"


def build_parser() -> FlagParser:
    parser = FlagParser("ember api-key", SUMMARY)
    parser.add_argument("action", choices=("create", "list"), help="create a key, or list the keys")
    parser.add_flag(
        "db",
        help=f"the control plane's database (default {DEFAULT_DB_URL})",
        metavar="<url>",
        default=DEFAULT_DB_URL,
    )
    parser.add_flag("name", help="a name to tell the key by (create)", metavar="<name>", default="default")
    return parser


def run(options: argparse.Namespace) -> int:
    return asyncio.run(_create(options) if options.action == "create" else _list(options))


async def _create(options: argparse.Namespace) -> int:
    store = await open_store(options.db)
    try:
        key = await add_api_key(store, options.name)
    finally:
        await store.close()
    print(key)
    return 0


async def _list(options: argparse.Namespace) -> int:
    store = await open_store(options.db)
    try:
        keys = await store.list_api_keys((await store.default_team()).id)
    finally:
        await store.close()
    for key in keys:
        print(f"{key.id}  {key.mask}  {key.created_at.isoformat(timespec='seconds')}  {key.name}")
    return 0
