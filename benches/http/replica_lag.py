#!/usr/bin/env python3
"""Replica lag: escrow a key through replica A, then ask replica B for it (help desk JSON
lookup by the full key ID) in a tight loop on a kept-alive connection until B answers 200.
The lag is the time from A's 201 to B's first 200; its resolution is one lookup round trip
(an audited miss: one PostgreSQL commit). Prints p50, p99 and max over ROUNDS rounds.

    replica_lag.py URL_A URL_B ADMIN_TOKEN HELPDESK_TOKEN [ROUNDS]

The help desk account must be exempt from the failed-lookup limit (benches/http/replicas.sh
sets that up).
"""
import http.client
import json
import random
import sys
import time
import urllib.parse


def conn(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port)


def post(c, path, token, body):
    c.request("POST", path, json.dumps(body),
              {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")


def guid(n):
    h = "%032X" % n
    return "{%s-%s-%s-%s-%s}" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def main():
    url_a, url_b, admin, helpdesk = sys.argv[1:5]
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 200
    a, b = conn(url_a), conn(url_b)
    s, tok = post(a, "/api/admin/enrollment-tokens", admin, {})
    assert s == 201, (s, tok)
    s, dev = post(a, "/api/agent/enroll", "",
                  {"enrollment_token": tok["token"], "device_name": "LAG-%d" % random.getrandbits(32)})
    assert s == 200, (s, dev)
    cred = dev["credential"]
    lags, polls = [], 0
    for _ in range(rounds):
        key = guid(random.getrandbits(128))
        password = "-".join("%06d" % (random.randrange(65536) * 11) for _ in range(8))
        s, body = post(a, "/api/agent/keys", cred, {
            "volume_id": "{11111111-2222-3333-4444-555555555555}", "key_protector_id": key,
            "recovery_password": password, "protector_type": "recovery_password"})
        assert s == 201, (s, body)
        acked = time.perf_counter()
        while True:
            s, body = post(b, "/api/helpdesk/lookup", helpdesk, {"key_id": key, "reason": "Other"})
            polls += 1
            if s == 200:
                assert body["recovery_password"] == password
                break
            assert s == 404, (s, body)
        lags.append(time.perf_counter() - acked)
    lags.sort()
    q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] * 1000
    print("replica lag over %d escrows (A -> B): p50 %.2f ms, p99 %.2f ms, max %.2f ms "
          "(%.1f lookups per escrow)" % (rounds, q(0.50), q(0.99), lags[-1] * 1000, polls / rounds))


main()
