"""A real SMTP server for Herald's tests and for `just up` (aiosmtpd).

Every accepted mail is written to a Maildir. Recipients choose faults by their local part:
  tempfail*@...  -> 451 4.3.0 at RCPT (temporary)
  nosuchuser*@... -> 550 5.1.1 at RCPT (unknown mailbox)
  reject*@...     -> 554 5.6.0 at DATA (message refused)
Usage: smtp_sink.py --port PORT --maildir DIR
"""

import argparse
import asyncio
import mailbox
import os
import signal

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, maildir):
        # Maildir(create=True) creates cur/new/tmp only when the directory itself is missing;
        # an existing empty directory (`mkdir -p` by a script) would fail every delivery.
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        self.maildir = mailbox.Maildir(maildir, create=True)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("tempfail"):
            return "451 4.3.0 Mailbox temporarily unavailable, try again later"
        if local.startswith("nosuchuser"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(r.split("@", 1)[0].lower().startswith("reject") for r in envelope.rcpt_tos):
            return "554 5.6.0 Message refused"
        key = self.maildir.add(envelope.original_content or envelope.content)
        return f"250 2.0.0 Ok: queued as {key}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    args = parser.parse_args()
    controller = Controller(Handler(args.maildir), hostname="127.0.0.1", port=args.port)
    controller.start()
    print(f"smtp sink on 127.0.0.1:{args.port}, mail in {args.maildir}", flush=True)
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.run_until_complete(stop)
    controller.stop()


if __name__ == "__main__":
    main()
