"""A real SMTP server for Herald's tests and for `just up` (aiosmtpd).

Every accepted mail is written to a Maildir. Recipients choose faults by their local part:
  tempfail*@...  -> 451 4.3.0 at RCPT (temporary)
  nosuchuser*@... -> 550 5.1.1 at RCPT (unknown mailbox)
  reject*@...     -> 554 5.6.0 at DATA (message refused)
Usage: smtp_sink.py --port PORT --maildir DIR
         [--tls-cert FILE --tls-key FILE [--tls-mode starttls|implicit]] [--auth USER:PASSWORD]

With a certificate the sink speaks TLS like a real relay: `starttls` (the default) offers
STARTTLS and refuses MAIL before it, `implicit` is TLS from the first byte (port 465 style).
With --auth (which needs TLS) every client must log in with that user and password first.
A mail that came over TLS or after a login gets `X-Sink-TLS: <version>` and
`X-Sink-Auth: <user>` put in front of its headers, so a test can tell how it arrived.
"""

import argparse
import asyncio
import logging
import mailbox
import os
import signal
import ssl
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


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
        content = envelope.original_content or envelope.content
        stamp = b""
        # The TLS transport after STARTTLS or of an implicit TLS connection; None on plain SMTP.
        tls = server.transport.get_extra_info("ssl_object") if server.transport else None
        if tls is not None:
            stamp += f"X-Sink-TLS: {tls.version()}\r\n".encode()
        if session.authenticated:
            stamp += f"X-Sink-Auth: {session.auth_data}\r\n".encode()
        key = self.maildir.add(stamp + content)
        return f"250 2.0.0 Ok: queued as {key}"


class Authenticator:
    """Accepts exactly one user and password (AUTH PLAIN or LOGIN)."""

    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        # handled=False: aiosmtpd answers 235, or 535 5.7.8 for a wrong login.
        return AuthResult(success=ok, handled=False, auth_data=self.user.decode() if ok else None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--tls-cert", help="PEM certificate (chain) the sink presents")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-mode", choices=["starttls", "implicit"], default="starttls")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.auth and not args.tls_cert:
        parser.error("--auth needs TLS (--tls-cert and --tls-key): no login in clear text")
    if args.auth and ":" not in args.auth:
        parser.error("--auth is USER:PASSWORD")

    options = {}
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        else:
            options.update(ssl_context=context)
    if args.auth:
        user, password = args.auth.split(":", 1)
        options.update(authenticator=Authenticator(user, password), auth_required=True)
        # aiosmtpd itself sets the deprecated Session.login_data on every login, and logs a
        # warning each time: noise in the tests' output.
        logging.getLogger("mail.log").addFilter(
            lambda record: not record.getMessage().startswith("Session.login_data is deprecated")
        )
        if args.tls_mode == "implicit":
            # aiosmtpd only counts STARTTLS as TLS: with implicit TLS and auth_require_tls it
            # neither offers nor accepts AUTH (aio-libs/aiosmtpd#274, #281). The connection is
            # TLS from the first byte, so the check is off, and so is its warning about it.
            options.update(auth_require_tls=False)
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            logging.getLogger("mail.log").addFilter(
                lambda record: "auth_require_tls == False" not in record.getMessage()
            )
        else:
            options.update(auth_require_tls=True)

    controller = Controller(Handler(args.maildir), hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    tls = f", TLS {args.tls_mode}" if args.tls_cert else ""
    auth = ", login required" if args.auth else ""
    print(f"smtp sink on 127.0.0.1:{args.port}{tls}{auth}, mail in {args.maildir}", flush=True)
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.run_until_complete(stop)
    controller.stop()


if __name__ == "__main__":
    main()
