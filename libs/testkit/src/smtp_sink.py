"""The SMTP sink of loyalty-testkit (smtp_sink.rs): an aiosmtpd server on 127.0.0.1:<port>.

Each accepted message is saved as <dir>/<n>.eml and announced as one JSON line on stdout
(envelope, decoded headers, decoded text body with LF line breaks). Recipients whose local part starts with
`reject-550` are refused with 550, those starting with `defer-451` with 451. The server stops
when its standard input closes (or it is killed).

Usage: python smtp_sink.py <port> <dir>
"""

import email
import email.policy
import json
import os
import sys

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject-550"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("defer-451"):
            return "451 4.3.0 <%s>: try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        raw = envelope.original_content or envelope.content
        path = os.path.join(self.out_dir, "%04d.eml" % self.count)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(msg.get("subject", "")),
            "headers": [[k, str(v)] for k, v in msg.items()],
            # Line breaks as LF (SMTP carries CRLF).
            "body": part.get_content().replace("\r\n", "\n") if part is not None else "",
            "file": path,
        }
        print(json.dumps(record), flush=True)
        return "250 2.0.0 Message accepted"


def main():
    port, out_dir = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Handler(out_dir), hostname="127.0.0.1", port=port)
    controller.start()
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
