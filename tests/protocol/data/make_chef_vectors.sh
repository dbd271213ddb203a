#!/bin/sh
# Regenerate the Chef request-signing vectors with the openssl command line
# only (independent of pushjobs' signer). Canonical strings are written by hand
# from the published mixlib-authentication algorithm; hashes come from
# `openssl dgst`. Run from this directory; the outputs are committed.
set -eu
KEY=test_key.pem
TS=2012-09-04T23:01:02Z
JOB_BODY='{"command":"chef-client","nodes":["web01"]}'

b64sha1() { printf '%s' "$1" | openssl dgst -sha1 -binary | base64 -w0; }
b64sha256() { printf '%s' "$1" | openssl dgst -sha256 -binary | base64 -w0; }

# v1.0: POST /organizations/acme/pushy/jobs as user "alice" (user id in clear)
printf 'Method:POST\nHashed Path:%s\nX-Ops-Content-Hash:%s\nX-Ops-Timestamp:%s\nX-Ops-UserId:%s' \
  "$(b64sha1 /organizations/acme/pushy/jobs)" "$(b64sha1 "$JOB_BODY")" "$TS" alice > chef_v1.0.canonical
# v1.1: GET /organizations/acme/pushy/config/web01 as client "web01" (hashed user id), empty body
printf 'Method:GET\nHashed Path:%s\nX-Ops-Content-Hash:%s\nX-Ops-Timestamp:%s\nX-Ops-UserId:%s' \
  "$(b64sha1 /organizations/acme/pushy/config/web01)" "$(b64sha1 '')" "$TS" "$(b64sha1 web01)" > chef_v1.1.canonical
# raw PKCS#1 v1.5 type-1 private encrypt of the whole canonical string
# (rsautl, because pkeyutl refuses inputs longer than a digest without -digest)
for v in 1.0 1.1; do
  openssl rsautl -sign -pkcs -inkey $KEY -in chef_v$v.canonical 2>/dev/null | base64 -w0 > chef_v$v.sig.b64
done
# v1.3: POST /organizations/acme/pushy/jobs as "alice", sha256, server API version 1
printf 'Method:POST\nPath:%s\nX-Ops-Content-Hash:%s\nX-Ops-Sign:version=1.3\nX-Ops-Timestamp:%s\nX-Ops-UserId:%s\nX-Ops-Server-API-Version:%s' \
  /organizations/acme/pushy/jobs "$(b64sha256 "$JOB_BODY")" "$TS" alice 1 > chef_v1.3.canonical
# standard RSA-SHA256 PKCS#1 v1.5 signature
openssl dgst -sha256 -sign $KEY chef_v1.3.canonical | base64 -w0 > chef_v1.3.sig.b64
