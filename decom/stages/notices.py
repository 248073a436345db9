"""Notices of the handover stage: tell each affected user what is switched off, when, and where their
documents and cases went.

Affected users: active accounts (not selected for lock-down) that own documents or hold open cases
or tasks, and every new owner, with the cases they receive. Each notice is rendered from a
`string.Template` ($placeholders; the plan's `template` file or decom/templates/notice.txt) into a
UTF-8 MIME message, written atomically to `stages/<stage>/outbox/<login>.eml` (step `notices`).
Users without an e-mail address are listed in the outbox index and reported as low findings.

With `[stages.notices.smtp]` the step `notices:send` sends the outbox through that server
(STARTTLS and AUTH as the plan says; the password only from ${ENV} or a file, never written
anywhere). Each message sent is journaled (`notice_sent`, with its Message-ID) and added to
`outbox/sent.json` right after the server accepted it; a rerun sends only messages that neither
names. Delivery is therefore at-least-once: a run killed after the server accepted a message and
before the journal entry sends that one message again on resume. The Message-ID is derived from
the message itself, so the copy carries the same Message-ID and mail clients show it once.
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import ssl
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from importlib import resources
from typing import Any

from decom.engine import StageContext, StagePlan, Step
from decom.errors import UserError
from decom.fileio import atomic_path, write_json
from decom.findings import Finding
from decom.stages.handover_package import content_source_name, file_name
from decom.stages.handover_rules import USABLE, Snapshot, label

PLACEHOLDERS = ("full_name", "login", "email", "system", "successor", "switch_off_at", "plan", "ticket", "contact",
                "from_address", "documents_owned", "documents_where", "archive_id", "cases_received",
                "cases_received_count", "cases_moved", "cases_moved_count", "cases_kept", "cases_kept_count")
NONE_LINE = "  —"


@dataclass(frozen=True)
class Notice:
    login: str
    email: str
    subject: str
    message_id: str
    raw: bytes
    received: int


# -- rendering -----------------------------------------------------------------------------------------

def _template(ctx: StageContext) -> tuple[str, str]:
    """(template text, where it comes from)."""
    name = ctx.stage_spec.notices.template
    if name is None:
        return resources.files("decom.templates").joinpath("notice.txt").read_text(encoding="utf-8"), "notice.txt"
    path = ctx.plan.resolve(name)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the notice template {path} ({type(exc).__name__})") from None


def _substitute(text: str, values: Mapping[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as exc:
        raise UserError(f"{where}: unknown placeholder ${exc.args[0]} (known: "
                        f"{', '.join('$' + p for p in PLACEHOLDERS)})") from None
    except ValueError as exc:
        raise UserError(f"{where}: {exc} (write $$ for a dollar sign)") from None


def _switch_off_at(ctx: StageContext) -> str:
    moment = ctx.stage_spec.notices.switch_off_at
    if moment is None:
        moment = next((s.freeze_at for s in ctx.plan.spec.stages if s.kind == "inventory" and s.freeze_at), None)
    return "a date still to be announced" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _documents_where(ctx: StageContext) -> str:
    return f"are kept in {content_source_name(ctx).split(' (')[0]}" if any(
        s.kind == "backup" for s in ctx.plan.spec.stages) else "stay in the old system until it is switched off"


def _archive_id(ctx: StageContext) -> str:
    from decom.stages.handover_package import backup_record

    backup = backup_record(ctx)
    return str(backup[1]["archive_id"]) if backup else "-"


def _due(row: Mapping[str, Any]) -> str:
    if row["due_at"] is None:
        return ""
    return f", due {row['due_at'].date().isoformat()}" + (" (past due)" if row["past_due"] else "")


def _lines(rows: list[dict[str, Any]], line: Any) -> str:
    listed = {r["case_id"] for r in rows if r["kind"] == "case"}
    shown = [line(r) for r in rows if r["kind"] == "case" or r["case_id"] not in listed]
    return "\n".join(shown) or NONE_LINE


def affected(snapshot: Snapshot) -> tuple[list[dict[str, Any]], list[str]]:
    """(accounts to tell, in login order; new owners who are not accounts of the source)."""
    holders = {r["assignee_login"] for r in snapshot.items if r["assignee_login"]}
    receivers = {r["new_owner_login"] for r in snapshot.items if r["new_owner_login"] and r["rule"] != "kept"}
    people = [p for p in snapshot.people
              if (p["status"] == USABLE and (p["documents_owned"] > 0 or p["login"] in holders))
              or p["login"] in receivers]
    known = {p["login"] for p in snapshot.people}
    return sorted(people, key=lambda p: p["login"]), sorted(receivers - known)


def _address(person: Mapping[str, Any]) -> Address | None:
    email = (person["email"] or "").strip()
    if "@" not in email:
        return None
    try:
        return Address(display_name=person["full_name"] or person["login"], addr_spec=email)
    except (ValueError, IndexError, HeaderParseError):
        return None


def render(ctx: StageContext, snapshot: Snapshot) -> tuple[list[Notice], list[dict[str, Any]], list[str]]:
    """(notices, affected accounts without a usable e-mail address, new owners that are not accounts)."""
    spec = ctx.stage_spec.notices
    body_template, where = _template(ctx)
    sender = parseaddr(spec.from_address)[1]
    if "@" not in sender:
        raise UserError(f"stage {ctx.stage_name}: notices.from_address {spec.from_address!r} has no e-mail address")
    meta = ctx.plan.spec.plan
    common = {"system": spec.system or str(getattr(ctx.adapter, "description", "") or meta.name),
              "successor": spec.successor, "switch_off_at": _switch_off_at(ctx), "plan": meta.name,
              "ticket": meta.ticket or "-", "contact": meta.owner, "from_address": spec.from_address,
              "documents_where": _documents_where(ctx), "archive_id": _archive_id(ctx)}
    people, strangers = affected(snapshot)
    notices, no_email = [], []
    for person in people:
        login = person["login"]
        address = _address(person)
        if address is None:
            no_email.append({"login": login, "full_name": person["full_name"], "email": person["email"]})
            continue
        received = [r for r in snapshot.items if r["new_owner_login"] == login and r["rule"] != "kept"
                    and r["assignee_login"] != login]
        moved = [r for r in snapshot.items if r["assignee_login"] == login and r["new_owner_login"] != login]
        kept = [r for r in snapshot.items if r["assignee_login"] == login and r["new_owner_login"] == login]
        values = {**common, "full_name": person["full_name"] or login, "login": login, "email": address.addr_spec,
                  "documents_owned": str(person["documents_owned"]),
                  "cases_received": _lines(received, lambda r: f"  - {label(r)}{_due(r)}, from "
                                           f"{r['assignee_login'] or r['candidate_group'] or 'nobody'}"),
                  "cases_received_count": str(sum(1 for r in received if r["kind"] == "case")),
                  "cases_moved": _lines(moved, lambda r: f"  - {label(r)} -> {r['new_owner_login'] or 'not decided'}"),
                  "cases_moved_count": str(sum(1 for r in moved if r["kind"] == "case")),
                  "cases_kept": _lines(kept, lambda r: f"  - {label(r)}{_due(r)}"),
                  "cases_kept_count": str(sum(1 for r in kept if r["kind"] == "case"))}
        body = _substitute(body_template, values, where)
        subject = " ".join(_substitute(spec.subject, values, "notices.subject").split())
        notices.append(_message(ctx, snapshot, address, subject, body, login, len(received)))
    return notices, no_email, strangers


def _message(ctx: StageContext, snapshot: Snapshot, to: Address, subject: str, body: str, login: str,
             received: int) -> Notice:
    spec = ctx.stage_spec.notices
    sender = parseaddr(spec.from_address)[1]
    seed = json.dumps([ctx.plan.spec.plan.name, ctx.stage_name, login, to.addr_spec, subject, body], ensure_ascii=False)
    message_id = f"<decom.{hashlib.sha256(seed.encode()).hexdigest()[:32]}@{sender.rpartition('@')[2]}>"
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = spec.from_address
    message["To"] = to
    if spec.reply_to:
        message["Reply-To"] = spec.reply_to
    message["Subject"] = subject
    message["Date"] = format_datetime(snapshot.taken_at)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body, charset="utf-8", cte="base64")
    return Notice(login, to.addr_spec, subject, message_id, message.as_bytes(), received)


# -- the dry run ---------------------------------------------------------------------------------------

def _server(smtp: Any) -> str:
    how = "STARTTLS" if smtp.starttls else "no TLS"
    return f"{smtp.host}:{smtp.port} ({how}{f', AUTH as {smtp.username}' if smtp.username else ''})"


def plan_notices(ctx: StageContext, snapshot: Snapshot, result: StagePlan) -> None:
    spec = ctx.stage_spec.notices
    if spec is None:
        result.decisions.append("no [stages.notices] table: nobody is told what is switched off and where their "
                                "documents and cases went")
        return
    try:
        notices, no_email, strangers = render(ctx, snapshot)
    except UserError as exc:
        result.blockers.append(f"notices: {exc}")
        return
    result.counts.update({"notices": len(notices), "affected_without_email": len(no_email)})
    result.actions.append(f"write {len(notices)} notice(s) to {ctx.stage_dir / 'outbox'} (one .eml per user)")
    if spec.smtp is not None:
        result.actions.append(f"send them through {_server(spec.smtp)}; each one journaled with its Message-ID "
                              "and never sent again by a rerun")
    else:
        result.decisions.append("no [stages.notices.smtp] table: the notices stay in the outbox for someone to send")
    for person in no_email:
        result.findings.append(Finding("low", "notice_no_email", f"user:{person['login']}",
                                       f"{person['login']} is affected by the handover but has no e-mail address; "
                                       "tell them another way", person))
    for login in strangers:
        result.findings.append(Finding("low", "notice_no_email", f"user:{login}",
                                       f"new owner {login} is not an account of the legacy system, so there is no "
                                       "e-mail address to send the notice to", {"login": login}))


# -- the steps -----------------------------------------------------------------------------------------

def _render_step(ctx: StageContext) -> dict[str, Any]:
    snapshot = Snapshot.load(ctx.stage_dir, ctx.outputs["cases"])
    notices, no_email, strangers = render(ctx, snapshot)
    outbox = ctx.stage_dir / "outbox"
    entries, names = [], set()
    for notice in notices:
        name = f"{file_name(notice.login)}.eml"
        with atomic_path(outbox / name) as tmp:
            tmp.write_bytes(notice.raw)
            ctx.crashpoint("inside")
        names.add(name)
        entries.append({"login": notice.login, "to": notice.email, "file": name, "message_id": notice.message_id,
                        "subject": notice.subject, "cases_received": notice.received})
    for stale in outbox.glob("*.eml"):
        if stale.name not in names:
            stale.unlink()
    index = outbox / "index.json"
    write_json(index, {"notices": entries, "without_email": no_email, "not_accounts": strangers})
    return {"file": str(index.relative_to(ctx.state_dir)), "notices": len(entries),
            "without_email": len(no_email), "not_accounts": len(strangers)}


def _journaled_sent(ctx: StageContext) -> set[str]:
    sent: set[str] = set()
    if ctx.journal is None or not ctx.journal.path.exists():
        return sent
    for line in ctx.journal.path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line
        details = entry.get("details", {})
        if entry.get("event") in ("notice_sent", "notice_refused") and details.get("stage") == ctx.stage_name:
            sent.add(str(details.get("message_id")))
    return sent


@contextmanager
def _connection(ctx: StageContext) -> Iterator[smtplib.SMTP]:
    smtp = ctx.stage_spec.notices.smtp
    where = f"the SMTP server {smtp.host}:{smtp.port}"
    password = ctx.plan.secret(smtp.password, smtp.password_file, "notices.smtp.password")
    try:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
    except OSError as exc:
        raise UserError(f"cannot reach {where}: {exc.strerror or type(exc).__name__}") from None
    try:
        client.ehlo()
        if smtp.starttls:
            cafile = str(ctx.plan.resolve(smtp.ca_file)) if smtp.ca_file else None
            client.starttls(context=ssl.create_default_context(cafile=cafile))
            client.ehlo()
        if smtp.username:
            client.login(smtp.username, password or "")
        yield client
    except smtplib.SMTPNotSupportedError:
        raise UserError(f"{where} does not offer STARTTLS (or AUTH); the plan asks for it") from None
    except smtplib.SMTPAuthenticationError as exc:
        raise UserError(f"{where} refused the login of {smtp.username} ({exc.smtp_code})") from None
    except ssl.SSLError as exc:
        raise UserError(f"STARTTLS with {where} failed ({exc.reason}); set notices.smtp.ca_file to the CA "
                        "that signed its certificate") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise UserError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _send_step(ctx: StageContext) -> dict[str, Any]:
    spec = ctx.stage_spec.notices
    outbox = ctx.stage_dir / "outbox"
    entries = json.loads((outbox / "index.json").read_text(encoding="utf-8"))["notices"]
    state_path = outbox / "sent.json"
    state: dict[str, dict[str, Any]] = (json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists()
                                        else {"sent": {}, "refused": {}})
    done = set(state["sent"]) | set(state["refused"]) | _journaled_sent(ctx)
    pending = [e for e in entries if e["message_id"] not in done]
    sender = parseaddr(spec.from_address)[1]
    server = f"{spec.smtp.host}:{spec.smtp.port}"
    sent_now = 0
    if pending:
        with _connection(ctx) as client:
            for entry in pending:
                raw = (outbox / entry["file"]).read_bytes()
                try:
                    client.sendmail(sender, [entry["to"]], raw)
                except smtplib.SMTPRecipientsRefused as exc:
                    reason = " ".join(f"{code} {text.decode(errors='replace')}"
                                      for code, text in exc.recipients.values())
                    ctx.record("notice_refused", login=entry["login"], to=entry["to"],
                               message_id=entry["message_id"], server=server, reason=reason)
                    state["refused"][entry["message_id"]] = {"login": entry["login"], "to": entry["to"],
                                                             "reason": reason}
                    write_json(state_path, state)
                    continue
                ctx.record("notice_sent", login=entry["login"], to=entry["to"], message_id=entry["message_id"],
                           server=server)
                state["sent"][entry["message_id"]] = {"login": entry["login"], "to": entry["to"],
                                                      "sent_at": datetime.now(UTC).isoformat(timespec="seconds")}
                write_json(state_path, state)
                sent_now += 1
                if sent_now == 1:
                    ctx.crashpoint("inside")  # one message sent and recorded, the others not yet
    write_json(state_path, state)
    return {"file": str(state_path.relative_to(ctx.state_dir)), "server": server, "sent_now": sent_now,
            "sent": len(state["sent"]), "refused": len(state["refused"]),
            "already_sent": len(entries) - len(pending)}


def steps(ctx: StageContext) -> Iterator[Step]:
    spec = ctx.stage_spec.notices
    yield Step("notices", "write a notice for every affected user to the outbox", _render_step,
               {"template": spec.template, "subject": spec.subject, "from_address": spec.from_address,
                "successor": spec.successor, "system": spec.system})
    if spec.smtp is not None:
        smtp = spec.smtp
        yield Step("notices:send", f"send the outbox through {_server(smtp)}", _send_step,
                   {"host": smtp.host, "port": smtp.port, "starttls": smtp.starttls, "username": smtp.username,
                    "ca_file": smtp.ca_file})
