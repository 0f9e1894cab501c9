"""``alt users add NAME --role annotator|admin | list | passwd NAME | deactivate NAME | activate NAME``.

The password comes from ``--password``, else the ``ALT_PASSWORD`` environment
variable, else an interactive prompt (asked twice).
"""

from __future__ import annotations

import getpass
import os

from alt_engine import users
from alt_engine.db import init_db

from . import CLIError, command_help, settings_from


def register(sub, common, selected: str | None = None) -> None:
    p = sub.add_parser("users", parents=[common], help=command_help("users"))
    usub = p.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", parents=[common], help="add a user")
    add.add_argument("name")
    add.add_argument("--role", choices=users.ROLES, default="annotator")
    add.add_argument("--password", default=None, help="else env ALT_PASSWORD, else asked")
    add.set_defaults(func=cmd_add)
    usub.add_parser("list", parents=[common], help="list users").set_defaults(func=cmd_list)
    pw = usub.add_parser("passwd", parents=[common], help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password", default=None, help="else env ALT_PASSWORD, else asked")
    pw.set_defaults(func=cmd_passwd)
    for action, active in (("deactivate", False), ("activate", True)):
        a = usub.add_parser(action, parents=[common], help=f"{action} a user (a deactivated user cannot sign in)")
        a.add_argument("name")
        a.set_defaults(func=lambda args, active=active: cmd_active(args, active))


def _password(args) -> str:
    if args.password is not None:
        return args.password
    if os.environ.get("ALT_PASSWORD"):
        return os.environ["ALT_PASSWORD"]
    first = getpass.getpass(f"password for {args.name}: ")
    if first != getpass.getpass("again: "):
        raise CLIError("passwords differ")
    return first


def cmd_add(args) -> None:
    settings = settings_from(args)
    init_db(settings.db)
    user = users.add_user(settings.db, args.name, _password(args), args.role)
    print(f"added {user.role} {user.name}")


def cmd_list(args) -> None:
    settings = settings_from(args)
    init_db(settings.db)
    rows = users.list_users(settings.db)
    if not rows:
        print("no users: `alt users add NAME --role admin`")
    for u in rows:
        print(f"{u.id:>4}  {u.name:<24} {u.role:<10} {'active' if u.active else 'inactive'}")


def cmd_passwd(args) -> None:
    settings = settings_from(args)
    keys = users.set_password(settings.db, args.name, _password(args))
    print(f"password changed for {args.name}: their sessions ended"
          + (f", {keys} API key(s) revoked (they make new ones in the API keys tab)" if keys else ""))


def cmd_active(args, active: bool) -> None:
    settings = settings_from(args)
    users.set_active(settings.db, args.name, active)
    print(f"{args.name} {'activated' if active else 'deactivated'}")
