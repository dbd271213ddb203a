# frozen_string_literal: true
#
# Chef request signing with the REAL mixlib-authentication (Debian's
# ruby-mixlib-authentication), driven by tests/compat/test_chef_signer.py.
#
# Two modes, JSON in on stdin, JSON out on stdout:
#
#   ruby chef_signer.rb request   {"base_url": "http(s)://127.0.0.1:PORT", "key_path": "...",
#                                  "user": "alice", "ca_file": PEM path (https),
#                                  "requests": [REQ, ...]}
#     REQ = {"method": "GET", "path": "/organizations/acme/pushy/jobs",
#            "query": "a=b" or "query_params": {"ccpk": KEY, ...} (CGI.escape'd; never
#            signed), "body": "..." (optional),
#            "version": "1.0"|"1.1"|"1.3", "api_version": "1" (X-Ops-Server-API-Version),
#            "accept": "application/json", "raw": false (true: write the request
#            on a plain TCP socket with the header names exactly as Chef's
#            authenticator produces them, i.e. upper-cased),
#            "sse_max_events": N, "sse_timeout": S (read an event stream)}
#     -> [{"status": 200, "body": "...", "content_type": "...",
#          "www_authenticate": "...", "sent_headers": {...}}, ...]
#
#   ruby chef_signer.rb verify    {"requests": [{"public_key": PEM, "method": "GET",
#                                  "path": "/x", "body": "", "headers": {...}}, ...]}
#     -> [{"ok": true|false, "user_id": "...", "error": "..."}, ...]
#     (headers signed by pushjobs.protocol.chef_auth.sign_request, verified by
#      Mixlib::Authentication::SignatureVerification, as a Chef server would)
#
# The signing reproduces what Chef's HTTP stack does for every request
# (Chef::HTTP::Authenticator#handle_request + Chef::HTTP::AuthCredentials
# #signature_headers, Chef 16): X-Ops-Server-API-Version is put in the
# request headers first (it is part of the v1.3 canonical request), then a
# SigningObject is built from {http_method, path (no query), body ("" when
# none), timestamp (Time.now.utc.iso8601), user_id, proto_version, headers},
# signed, `host` ("HOST:PORT") merged in, and every header name upper-cased.

require "openssl" # must precede mixlib-authentication on Debian's Ruby 3.1 (Digest superclass clash)
require "base64"
require "cgi"
require "json"
require "time"
require "net/http"
require "socket"
require "uri"
require "mixlib/authentication"
require "mixlib/authentication/version"
require "mixlib/authentication/signedheaderauth"
require "mixlib/authentication/signatureverification"

module CompatSigner
  module_function

  # The headers Chef's HTTP stack sends for one request (names upper-cased as
  # AuthCredentials#signature_headers does; X-Ops-Server-API-Version keeps the
  # case Chef::HTTP::Authenticator gave it).
  def chef_headers(key, user, method, uri, body, version, api_version)
    # nil: no header at all (a bare mixlib signer); v1.3 then signs "0"
    headers = api_version.nil? ? {} : { "X-Ops-Server-API-Version" => api_version.to_s }
    request_params = {
      http_method: method.to_sym, # Chef::HTTP passes :GET, :POST, ... (canonicalized upcase)
      path: uri.path,
      body: body || "",
      host: "#{uri.host}:#{uri.port}",
      headers: headers,
      timestamp: Time.now.utc.iso8601,
      user_id: user,
      proto_version: version,
    }
    host = request_params.delete(:host)
    sign_obj = Mixlib::Authentication::SignedHeaderAuth.signing_object(request_params)
    signed = sign_obj.sign(key).merge({ host: host })
    signed = signed.each_with_object({}) { |(k, v), memo| memo[k.to_s.upcase] = v }
    headers.merge(signed)
  end

  # Net::HTTP.start as Chef's BasicClient does: TLS with peer verification
  # against `ca_file` (Chef's trusted_certs) when the URL is https.
  def http_start(uri, ca_file, read_timeout, &block)
    opts = { open_timeout: 5, read_timeout: read_timeout }
    if uri.scheme == "https"
      opts.update(use_ssl: true, verify_mode: OpenSSL::SSL::VERIFY_PEER)
      opts[:ca_file] = ca_file if ca_file
    end
    Net::HTTP.start(uri.host, uri.port, **opts, &block)
  end

  def perform(base_url, key, user, req, ca_file = nil)
    uri = URI(base_url + req.fetch("path"))
    uri.query = req["query"] if req["query"]
    if req["query_params"] # escaped as the stock client does: CGI.escape of each value
      uri.query = req["query_params"].map { |k, v| "#{k}=#{CGI.escape(v.to_s)}" }.join("&")
    end
    method = req.fetch("method", "GET").upcase
    body = req["body"]
    headers = chef_headers(key, user, method, uri, body, req.fetch("version", "1.1"),
                           req.key?("api_version") ? req["api_version"] : "1")
    headers["Accept"] = req.fetch("accept", "application/json")
    headers["X-Chef-Version"] = "16.18.0"
    headers["Content-Type"] = "application/json" if body
    return perform_raw(uri, method, headers, body) if req["raw"]

    out = { "sent_headers" => headers }
    http_start(uri, ca_file, req.fetch("sse_timeout", 10)) do |http|
      klass = { "GET" => Net::HTTP::Get, "POST" => Net::HTTP::Post, "PUT" => Net::HTTP::Put,
                "DELETE" => Net::HTTP::Delete }.fetch(method)
      request = klass.new(uri.request_uri, headers)
      request.body = body if body
      if req["sse_max_events"]
        http.request(request) do |res|
          out.update(response_fields(res))
          out["events"] = read_sse(res, req["sse_max_events"].to_i)
        end
      else
        res = http.request(request)
        out.update(response_fields(res))
        out["body"] = res.body.to_s.force_encoding("UTF-8")
      end
    end
    out
  end

  def response_fields(res)
    { "status" => res.code.to_i, "content_type" => res["Content-Type"],
      "www_authenticate" => res["WWW-Authenticate"] }
  end

  # Reads `text/event-stream` until `max` events arrived or the stream ended
  # (a finished job's feed is finite; its last event may lack the blank line).
  def read_sse(res, max)
    events = []
    buf = +""
    flush = lambda do |block|
      ev = {}
      block.split("\n").each do |line|
        next if line.empty? || line.start_with?(":")
        name, value = line.split(":", 2)
        ev[name] = value.to_s.sub(/\A /, "")
      end
      events << ev unless ev.empty?
    end
    if res.code.to_i != 200
      events << { "body" => res.body.to_s }
      return events
    end
    begin
      res.read_body do |chunk|
        buf << chunk
        while (i = buf.index("\n\n"))
          flush.call(buf.slice!(0, i + 2))
          return events if events.size >= max
        end
      end
    rescue Net::ReadTimeout
      events << { "timeout" => "true" }
    end
    flush.call(buf) unless buf.strip.empty?
    events
  end

  # The request written by hand, header names exactly as given (net/http would
  # re-capitalize them): what the stock client's headers look like on the wire.
  def perform_raw(uri, method, headers, body)
    sock = TCPSocket.new(uri.host, uri.port)
    lines = ["#{method} #{uri.request_uri} HTTP/1.1"]
    headers.each { |k, v| lines << "#{k}: #{v}" }
    lines << "Content-Length: #{body.bytesize}" if body
    lines << "Connection: close"
    sock.write(lines.join("\r\n") + "\r\n\r\n" + (body || ""))
    raw = sock.read
    sock.close
    head, resp_body = raw.split("\r\n\r\n", 2)
    status = head.lines.first.split(" ")[1].to_i
    hdrs = head.lines.drop(1).each_with_object({}) do |l, m|
      k, v = l.split(":", 2)
      m[k.strip.downcase] = v.to_s.strip
    end
    if hdrs["transfer-encoding"].to_s.downcase == "chunked"
      decoded = +""
      rest = resp_body
      loop do
        size_line, rest = rest.split("\r\n", 2)
        size = size_line.to_i(16)
        break if size.zero?
        decoded << rest[0, size]
        rest = rest[(size + 2)..]
      end
      resp_body = decoded
    end
    { "status" => status, "body" => resp_body.to_s.force_encoding("UTF-8"),
      "content_type" => hdrs["content-type"], "www_authenticate" => hdrs["www-authenticate"],
      "sent_headers" => headers }
  end

  # A Rack-like request, what SignatureVerification reads: env HTTP_* headers,
  # method, path, params, raw_post.
  FakeRequest = Struct.new(:env, :method, :path, :params, :raw_post)

  def verify(item)
    env = {}
    item.fetch("headers").each { |k, v| env["HTTP_" + k.upcase.tr("-", "_")] = v }
    env["HTTP_HOST"] ||= "localhost:443"
    request = FakeRequest.new(env, item.fetch("method"), item.fetch("path"), {}, item.fetch("body", ""))
    key = OpenSSL::PKey::RSA.new(item.fetch("public_key"))
    verifier = Mixlib::Authentication::SignatureVerification.new
    res = verifier.authenticate_user_request(request, key)
    { "ok" => !res.nil?, "user_id" => res&.name,
      "valid_signature" => verifier.valid_signature?, "valid_timestamp" => verifier.valid_timestamp?,
      "valid_content_hash" => verifier.valid_content_hash? }
  rescue StandardError => e
    { "ok" => false, "error" => "#{e.class}: #{e.message}" }
  end
end

if $PROGRAM_NAME == __FILE__
  input = JSON.parse($stdin.read)
  result =
    case ARGV[0]
    when "request"
      key = OpenSSL::PKey::RSA.new(File.read(input.fetch("key_path")))
      input.fetch("requests").map do |req|
        CompatSigner.perform(input.fetch("base_url"), key, input.fetch("user"), req, input["ca_file"])
      rescue StandardError => e
        { "error" => "#{e.class}: #{e.message}" }
      end
    when "verify"
      input.fetch("requests").map { |item| CompatSigner.verify(item) }
    else
      warn "usage: chef_signer.rb request|verify < input.json"
      exit 2
    end
  $stdout.write(JSON.generate({ "mixlib_authentication" => Mixlib::Authentication::VERSION,
                                "results" => result }))
end
