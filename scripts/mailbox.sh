#!/usr/bin/env bash
# `just mailbox`: the mails the local SMTP mailbox of `just up` received, newest last.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import mailbox, os
from email.utils import parsedate_to_datetime
path = ".local/mail"
if not os.path.isdir(os.path.join(path, "new")):
    print("no mailbox yet: `just up` starts it")
    raise SystemExit
box = mailbox.Maildir(path, create=False)
mails = sorted(box, key=lambda m: parsedate_to_datetime(m["Date"]) if m["Date"] else 0)
for m in mails:
    body = m.get_payload(decode=True) if not m.is_multipart() else m.get_payload(0).get_payload(decode=True)
    # Long enough for a whole verification mail: its link must not be cut.
    text = (body or b'').decode(errors='replace').strip()
    text = text if len(text) <= 2000 else text[:2000] + " …"
    print(f"{m['Date']}  {m['From']} -> {m['To']}\n  Subject: {m['Subject']}\n  {text}\n")
print(f"{len(mails)} mail(s) in {path}")
PY
