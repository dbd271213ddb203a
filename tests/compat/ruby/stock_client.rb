# frozen_string_literal: true
#
# An emulation of the stock Chef push-jobs client (opscode-pushy-client 3.0.13)
# ON THE WIRE, written for tests/compat/test_stock_client.py. It is NOT the
# original program: it is our own code, written after reading the original's
# lib/pushy_client.rb, protocol_handler.rb, heartbeater.rb, job_runner.rb and
# whitelist.rb, reproducing what those send and how they react, with the same
# Ruby libraries the original loads: mixlib-authentication (request signing,
# Digester), ffi-rzmq on libzmq (CurveZMQ), OpenSSL, JSON.
#
#   ruby stock_client.rb --chef-server-url http://127.0.0.1:PORT/organizations/ORG \
#        --node-name web1 --client-key web1.pem --whitelist '{"hello":"echo hi"}' \
#        [--hostname NAME] [--sign-version 1.1] [--api-version 1] [--allow-unencrypted]
#
# Reports what happens as JSON lines on stdout ({"ev": ...}); exits when stdin
# closes (so a dead test never leaves it behind) or on SIGTERM.
#
# Behaviour kept from the original (see tests/compat/README.md for the list of
# what differs): config GET signed by Chef's signer (v1.1 default), ccpk
# CGI-escaped and version=2.0 in the query; session key RSA-decrypted
# (PKCS#1 v1.5) with the client key; SUB (subscribe all) + DEALER (LINGER 0,
# RCVHWM 0, SNDHWM 3, CURVE client keys); header
# "Version:2.0;SigningMethod:hmac_sha256;Signature:" + Base64.encode64(..).chomp;
# bodies with the original's field set and order, JSON.generate; heartbeats
# every `interval` while the server is considered online; server messages
# verified (rsa2048_sha1: public_decrypt == Digester.hash_string(body);
# hmac_sha256: SHA-512 of both digests compared), only future-dated timestamps
# rejected; the 1-second poll loop with the "no message on the command port
# in 3 loops → reconfigure and end the thread" check; incarnation change →
# sleep U[0, interval) → full reconfigure (waits for an idle job runner);
# offline (more than offline_threshold missed heartbeats) → sockets reopened;
# commit/run/abort handled as job_runner.rb does; stdout/stderr only sent
# when the commit asked for capture.

require "openssl" # before mixlib-authentication (Debian Ruby 3.1 Digest superclass clash)
require "base64"
require "cgi"
require "etc"
require "json"
require "net/http"
require "optparse"
require "securerandom"
require "socket"
require "time"
require "uri"
require "ffi-rzmq"
require "mixlib/authentication/digester"
require_relative "chef_signer"

PROTOCOL_VERSION = "2.0"
MAX_OUTPUT_BYTES = 63_000 # protocol_handler.rb MAX_BODY_SIZE

# One JSON line per observation, for the test.
module Report
  @lock = Mutex.new
  def self.emit(ev, **fields)
    line = JSON.generate({ ev: ev, t: Time.now.to_f }.merge(fields))
    @lock.synchronize do
      $stdout.write(line + "\n")
      $stdout.flush
    end
  rescue StandardError
    nil
  end
end

class StockClient
  attr_reader :config, :node_name, :org_name, :hostname, :incarnation_id, :whitelist,
              :client_curve_pub_key, :client_curve_sec_key, :using_curve, :legacy_mode,
              :client_key_path, :file_dir

  def initialize(opts)
    @chef_server_url = opts.fetch(:chef_server_url)
    @node_name = opts.fetch(:node_name)
    @client_name = opts[:client_name] || @node_name
    @client_key_path = opts.fetch(:client_key)
    @client_key = OpenSSL::PKey::RSA.new(File.read(@client_key_path).strip)
    @whitelist = opts[:whitelist] || {}
    @hostname = opts[:hostname] || Socket.gethostname.split(".").first # Ohai's `hostname`
    @sign_version = opts[:sign_version] || "1.1"
    @api_version = opts[:api_version] || "1"
    @allow_unencrypted = opts[:allow_unencrypted] || false
    @file_dir = opts[:file_dir] || "/tmp/pushy"
    @ca_file = opts[:ca_file] # Chef's trusted_certs for an https chef_server_url
    @client_curve_pub_key, @client_curve_sec_key = ZMQ::Util.curve_keypair
    raise "chef_server must end in /organizations/ORG_NAME" unless @chef_server_url =~ %r{/organizations/+([^/]+)/*}

    @org_name = Regexp.last_match(1)
    @incarnation_id = SecureRandom.uuid # generated once per process, never persisted
    @job_runner = JobRunner.new(self)
    @heartbeater = Heartbeater.new(self)
    @protocol_handler = ProtocolHandler.new(self)
    @reconfigure_lock = Mutex.new
  end

  def start
    @config = get_config(first: true)
    @protocol_handler.start
    @heartbeater.start
    Report.emit("started", incarnation_id: @incarnation_id, hostname: @hostname)
  end

  def reconfigure(reason)
    Report.emit("reconfigure", reason: reason)
    sleep 0.1 until @job_runner.safe_to_reconfigure? # the original polls every 5 s
    @reconfigure_lock.synchronize do
      @config = get_config(first: false)
      @protocol_handler.reconfigure
      @heartbeater.reconfigure
    end
    Report.emit("reconfigured", server_incarnation: @config["incarnation_id"])
  end

  def trigger_reconfigure(reason)
    Thread.new do
      reconfigure(reason)
    rescue StandardError => e
      Report.emit("reconfigure_failed", error: "#{e.class}: #{e.message}")
    end
  end

  # GET pushy/config/NODE?ccpk=…&version=2.0 through Chef's signer. The
  # original goes through Chef::ServerAPI, whose HTTP layer retries refused
  # connections and 5xx (http_retry_count 5, delay 5 s; 0.5 s here).
  def get_config(first:)
    esc_key = CGI.escape(@client_curve_pub_key)
    uri = URI("#{@chef_server_url}/pushy/config/#{@node_name}?ccpk=#{esc_key}&version=#{PROTOCOL_VERSION}")
    attempts = 0
    begin
      attempts += 1
      headers = CompatSigner.chef_headers(@client_key, @client_name, "GET", uri, "", @sign_version, @api_version)
      headers["Accept"] = "application/json"
      res = CompatSigner.http_start(uri, @ca_file, 5) do |http|
        http.request(Net::HTTP::Get.new(uri.request_uri, headers))
      end
      raise IOError, "HTTP #{res.code}" if res.code.to_i >= 500
    rescue SystemCallError, IOError, Net::OpenTimeout, Net::ReadTimeout => e
      raise if attempts > 5

      Report.emit("config_retry", error: e.message)
      sleep 0.5
      retry
    end
    unless res.code.to_i == 200
      Report.emit("config_error", status: res.code.to_i, body: res.body)
      exit(1) if first # Chef::ServerAPI raises; the client process ends with status 1
      raise "config GET: HTTP #{res.code}"
    end
    config = JSON.parse(res.body)
    if config.key?("curve_public_key")
      @using_curve = true
      @legacy_mode = false
    elsif @allow_unencrypted
      @using_curve = false
      @legacy_mode = true
    else
      Report.emit("config_error", status: 200, body: "no curve_public_key and allow_unencrypted not set")
      abort "Exiting: No key returned from server"
    end
    Report.emit("config", status: 200, server_incarnation: config["incarnation_id"],
                          using_curve: @using_curve, interval: config["push_jobs"]["heartbeat"]["interval"])
    config
  end

  def job_state
    @job_runner.job_state
  end

  def send_command(type, job_id, params = {})
    @protocol_handler.send_command(type, job_id, params)
  end

  def send_heartbeat
    @protocol_handler.send_heartbeat
  end

  def commit(job_id, command, opts)
    @job_runner.commit(job_id, command, opts)
  end

  def run(job_id)
    @job_runner.run(job_id)
  end

  def abort_job
    @job_runner.abort
  end

  def heartbeat_received(incarnation_id, sequence)
    @heartbeater.heartbeat_received(incarnation_id, sequence)
  end

  def server_went_offline
    Thread.new do
      @protocol_handler.reconfigure
      Report.emit("sockets_reopened")
    rescue StandardError => e
      Report.emit("error", where: "reopen sockets", error: e.message)
    end
  end
end

# Whitelist lookup as whitelist.rb: exact key first, then Regexp keys (none
# here: keys come from JSON). Hash values carry "command_line".
class StockClient
  def whitelisted(command)
    @whitelist[command]
  end
end

class StockClient
  class Heartbeater
    def initialize(client)
      @client = client
      @online_mutex = Mutex.new
      @online = false
    end

    attr_reader :interval

    def start
      cfg = @client.config
      @incarnation_id = cfg["incarnation_id"]
      hb = cfg["push_jobs"]["heartbeat"]
      @online_threshold = hb["online_threshold"]
      @offline_threshold = hb["offline_threshold"]
      @interval = hb["interval"]
      @online_counter = 0
      @offline_counter = 0
      set_online(true) # optimistic: the config GET just worked
      @thread = Thread.new do
        loop do
          begin
            @online_mutex.synchronize do
              if @online
                if @offline_counter > @offline_threshold
                  set_online(false)
                  @online_counter = 0
                else
                  @offline_counter += 1
                end
              end
            end
            @client.send_heartbeat if @online
            sleep(@interval)
          rescue StandardError => e
            Report.emit("error", where: "heartbeat thread", error: e.message)
          end
        end
      end
    end

    def stop
      @thread&.kill
      @thread&.join
    end

    def reconfigure
      stop
      start
    end

    def heartbeat_received(incarnation_id, _sequence)
      if @incarnation_id != incarnation_id
        if @incarnation_id.nil?
          @incarnation_id = incarnation_id
        else
          splay = Random.new.rand(@interval.to_f)
          Report.emit("restart_detected", old: @incarnation_id, new: incarnation_id, splay: splay)
          @incarnation_id = incarnation_id
          sleep(splay)
          @client.trigger_reconfigure("server incarnation changed")
        end
      end
      @online_mutex.synchronize do
        @offline_counter = 0
        if !@online && @online_counter > @online_threshold
          set_online(true)
        else
          @online_counter += 1
        end
      end
    end

    private

    def set_online(online)
      changed = online != @online
      @online = online
      Report.emit(online ? "online" : "offline")
      @client.server_went_offline if changed && !online
    end
  end

  class ProtocolHandler
    def initialize(client)
      @client = client
      @socket_lock = Mutex.new
      @receive_socket_lock = Mutex.new
      @context = ZMQ::Context.new(1)
    end

    def start
      cfg = @client.config
      @server_public_key = OpenSSL::PKey::RSA.new(cfg["public_key"])
      @client_private_key = OpenSSL::PKey::RSA.new(File.read(@client.client_key_path).strip)
      @max_message_skew = cfg["max_message_skew"]
      begin
        enc = Base64.decode64(cfg["encoded_session_key"]["key"])
        @session_key = @client_private_key.private_decrypt(enc) # PKCS#1 v1.5
      rescue StandardError
        Report.emit("config_error", status: 200, body: "No session key found in config")
        exit(-1)
      end
      @heartbeat_address = cfg["push_jobs"]["heartbeat"]["out_addr"]
      @command_address = cfg["push_jobs"]["heartbeat"]["command_addr"]

      @sub = @context.socket(ZMQ::SUB)
      check(@sub.connect(@heartbeat_address), "SUB connect")
      check(@sub.setsockopt(ZMQ::SUBSCRIBE, ""), "SUBSCRIBE")

      @dealer = @context.socket(ZMQ::DEALER)
      check(@dealer.setsockopt(ZMQ::LINGER, 0), "LINGER")
      check(@dealer.setsockopt(ZMQ::RCVHWM, 0), "RCVHWM")
      check(@dealer.setsockopt(ZMQ::SNDHWM, 3), "SNDHWM")
      if @client.using_curve
        check(@dealer.setsockopt(ZMQ::CURVE_SERVERKEY, cfg["curve_public_key"]), "CURVE_SERVERKEY")
        check(@dealer.setsockopt(ZMQ::CURVE_PUBLICKEY, @client.client_curve_pub_key), "CURVE_PUBLICKEY")
        check(@dealer.setsockopt(ZMQ::CURVE_SECRETKEY, @client.client_curve_sec_key), "CURVE_SECRETKEY")
      end
      check(@dealer.connect(@command_address), "DEALER connect")
      @outgoing_seq = 0
      @receive_thread = start_receive_thread
    end

    def reconfigure
      @socket_lock.synchronize do
        @receive_socket_lock.synchronize do
          internal_stop
          start
        end
      end
    end

    def send_command(type, job_id, params = {})
      message = {
        node: @client.node_name, client: @client.hostname, protocol_version: PROTOCOL_VERSION,
        org: @client.org_name, type: type, sequence: -1, timestamp: Time.now.httpdate,
        incarnation_id: @client.incarnation_id, job_id: job_id
      }.merge(validate_params(params))
      send_signed(message)
    end

    def send_heartbeat
      state = @client.job_state
      message = {
        node: @client.node_name, client: @client.hostname, protocol_version: PROTOCOL_VERSION,
        org: @client.org_name, type: :heartbeat, sequence: -1, timestamp: Time.now.httpdate,
        incarnation_id: @client.incarnation_id, job_state: state[:state], job_id: state[:job_id]
      }
      send_signed(message)
    end

    private

    # The original's MAX_BODY_SIZE rule: when stdout + stderr exceed 63000
    # bytes both are dropped (the completion is sent without output).
    def validate_params(params)
      size = params[:stdout].to_s.bytesize + params[:stderr].to_s.bytesize
      return params unless size > MAX_OUTPUT_BYTES

      Report.emit("output_dropped", bytes: size)
      params.reject { |k, _| %i[stdout stderr].include?(k) }
    end

    def check(rc, what)
      raise "#{what} failed: #{ZMQ::Util.error_string}" unless ZMQ::Util.resultcode_ok?(rc)
    end

    def internal_stop
      @dealer&.close
      @dealer = nil
      @sub&.close
      @sub = nil
      @receive_thread&.kill
      @receive_thread&.join
      @receive_thread = nil
    end

    def send_signed(message)
      @socket_lock.synchronize do
        @outgoing_seq += 1
        message[:sequence] = @outgoing_seq
        body = JSON.generate(message)
        sig = Base64.encode64(OpenSSL::HMAC.digest("sha256", @session_key, body)).chomp
        header = "Version:2.0;SigningMethod:hmac_sha256;Signature:#{sig}"
        if @dealer
          rc1 = @dealer.send_string(header, ZMQ::SNDMORE)
          rc2 = @dealer.send_string(body)
          Report.emit("sent", header: header, body: body,
                              ok: ZMQ::Util.resultcode_ok?(rc1) && ZMQ::Util.resultcode_ok?(rc2))
        else
          Report.emit("dropped", body: body)
        end
      end
    end

    def start_receive_thread
      dealer = @dealer
      sub = @sub
      Thread.new do
        received_command = false
        loops_since_connection = 0
        poller = ZMQ::Poller.new
        poller.register_readable(dealer)
        poller.register_readable(sub)
        loop do
          begin
            messages = []
            @receive_socket_lock.synchronize do
              rc = poller.poll(1000)
              # ffi-rzmq keeps the previous readables when zmq_poll fails
              # (EINTR: a finished job's SIGCHLD); reading those would block
              # in recv until that socket gets another message, which the
              # original would do. Deliberately not reproduced (README).
              if rc.negative?
                Report.emit("poll_error", errno: ZMQ::Util.errno, error: ZMQ::Util.error_string)
                next
              end
              poller.readables.each do |socket|
                header = +""
                socket.recv_string(header)
                unless socket.more_parts?
                  Report.emit("invalid", reason: "one frame")
                  next
                end
                body = +""
                socket.recv_string(body)
                if socket.more_parts?
                  loop do
                    s = +""
                    socket.recv_string(s)
                    break unless socket.more_parts?
                  end
                  Report.emit("invalid", reason: "more than two frames")
                  next
                end
                from = socket.equal?(dealer) ? "command" : "heartbeat"
                received_command = true if from == "command"
                messages << [from, header, body]
              end
            end
            sleep(0.005) # the original's yield to a waiting reconfigure
            messages.each do |from, header, body|
              if self.class.valid?(header, body, @server_public_key, @session_key)
                handle_message(from, header, body)
              else
                Report.emit("invalid", reason: "signature", socket: from, header: header, body: body)
              end
            end
            if !received_command && !@client.legacy_mode
              loops_since_connection += 1
              if loops_since_connection > 3
                Report.emit("no_command_messages", loops: loops_since_connection)
                @client.trigger_reconfigure("no messages on the command port")
                break
              end
            end
          rescue StandardError => e
            Report.emit("error", where: "receive thread", error: "#{e.class}: #{e.message}")
          end
        end
      end
    end

    def handle_message(from, header, body)
      json = JSON.parse(body, create_additions: false)
      unless json.key?("timestamp")
        Report.emit("invalid", reason: "missing timestamp", body: body)
        return
      end
      begin
        delta = Time.parse(json["timestamp"]) - Time.now
        if delta > @max_message_skew # only the future is refused (the original's quirk)
          Report.emit("invalid", reason: "timestamp", body: body)
          return
        end
      rescue StandardError
        Report.emit("invalid", reason: "unparseable timestamp", body: body)
        return
      end
      Report.emit("received", socket: from, type: json["type"], method: header[/SigningMethod:([^;]*)/, 1],
                              body: json)
      case json["type"]
      when "heartbeat"
        @client.heartbeat_received(json["incarnation_id"], json["sequence"])
      when "commit"
        job_id = json["job_id"]
        if job_id && json["command"]
          opts = {}
          %w[user dir env capture file].each { |k| opts[k] = json[k] if json[k] }
          @client.commit(job_id, json["command"], opts)
        else
          @client.send_command(:nack_commit, nil)
        end
      when "run"
        if json["job_id"]
          @client.run(json["job_id"])
        else
          @client.send_command(:nack_run, nil)
        end
      when "abort"
        @client.abort_job
      when "ack"
        nil
      else
        Report.emit("invalid", reason: "unknown type", body: body)
      end
    rescue JSON::ParserError
      Report.emit("invalid", reason: "json", body: body)
    end

    def self.valid?(header, body, server_public_key, session_key)
      fields = header.split(";").each_with_object({}) do |clause, acc|
        k, v = clause.split(":")
        acc[k] = v
      end
      return false unless fields["Signature"]

      sig = Base64.decode64(fields["Signature"])
      case fields["SigningMethod"]
      when "rsa2048_sha1"
        server_public_key.public_decrypt(sig) == Mixlib::Authentication::Digester.hash_string(body)
      when "hmac_sha256"
        mine = OpenSSL::HMAC.digest("sha256", session_key, body)
        OpenSSL::Digest::SHA512.digest(sig) == OpenSSL::Digest::SHA512.digest(mine)
      else
        false
      end
    rescue OpenSSL::PKey::PKeyError
      false
    end
  end

  # job_runner.rb's states and answers; the command runs through Ruby's
  # spawn (a string: through /bin/sh when it has shell syntax, as ShellOut).
  class JobRunner
    def initialize(client)
      @client = client
      @lock = Mutex.new
      @state = :idle
      @job_id = nil
      @pid = nil
    end

    def safe_to_reconfigure?
      @lock.synchronize { @state == :idle }
    end

    def job_state
      @lock.synchronize { { state: @state, job_id: @job_id } }
    end

    def commit(job_id, command, opts)
      @lock.synchronize do
        if @state != :idle
          @client.send_command(:nack_commit, job_id)
        elsif @client.whitelisted(command).nil?
          Report.emit("not_whitelisted", command: command)
          @client.send_command(:nack_commit, job_id)
        elsif !(user_ok?(opts) && dir_ok?(opts) && file_ok?(opts))
          @client.send_command(:nack_commit, job_id)
        else
          @opts = opts
          set_state(:committed, job_id, command)
          @client.send_command(:ack_commit, job_id)
        end
      end
    end

    def run(job_id)
      @lock.synchronize do
        if @state == :committed && @job_id == job_id
          start_process
          set_state(:running, job_id, @command)
          @client.send_command(:ack_run, job_id)
        else
          @client.send_command(:nack_run, job_id)
        end
      end
    end

    def abort
      @lock.synchronize do
        job_id = @job_id
        if @state == :running && @pid
          begin
            Process.kill("TERM", @pid)
          rescue StandardError
            nil
          end
        end
        set_state(:idle)
        @client.send_command(:aborted, job_id)
      end
    end

    private

    def set_state(state, job_id = nil, command = nil)
      @state = state
      @job_id = job_id
      @command = command
      Report.emit("job_state", state: state, job_id: job_id)
    end

    def user_ok?(opts)
      return true unless opts["user"]

      Etc.getpwnam(opts["user"])
      true
    rescue ArgumentError
      false
    end

    def dir_ok?(opts)
      !opts["dir"] || Dir.exist?(opts["dir"])
    end

    def file_ok?(opts)
      !opts["file"] || opts["file"].start_with?("base64:", "raw:")
    end

    def start_process
      entry = @client.whitelisted(@command)
      command_line = entry.is_a?(Hash) ? entry["command_line"] : entry
      env = (@opts["env"] || {}).merge("CHEF_PUSH_NODE_NAME" => @client.node_name, "CHEF_PUSH_JOB_ID" => @job_id)
      capture = @opts["capture"] || false
      job_id = @job_id
      out_r, out_w = IO.pipe
      err_r, err_w = IO.pipe
      spawn_opts = { out: out_w, err: err_w, in: File::NULL }
      spawn_opts[:chdir] = @opts["dir"] if @opts["dir"]
      @pid = Process.spawn(env, command_line, **spawn_opts)
      out_w.close
      err_w.close
      pid = @pid
      Thread.new do
        readers = [Thread.new { out_r.read }, Thread.new { err_r.read }]
        stdout, stderr = readers.map(&:value)
        _, status = Process.wait2(pid)
        completed(job_id, status.exitstatus, capture ? stdout : nil, capture ? stderr : nil)
      rescue StandardError => e
        Report.emit("error", where: "job thread", error: e.message)
      end
    end

    def completed(job_id, exit_code, stdout, stderr)
      @lock.synchronize do
        return unless @state == :running && @job_id == job_id

        set_state(:idle)
        params = {}
        params[:stdout] = stdout if stdout
        params[:stderr] = stderr if stderr
        @client.send_command(exit_code == 0 ? :succeeded : :failed, job_id, params)
      end
    end
  end
end

if $PROGRAM_NAME == __FILE__
  opts = {}
  OptionParser.new do |o|
    o.on("--chef-server-url URL") { |v| opts[:chef_server_url] = v }
    o.on("--node-name NAME") { |v| opts[:node_name] = v }
    o.on("--client-name NAME") { |v| opts[:client_name] = v }
    o.on("--client-key PATH") { |v| opts[:client_key] = v }
    o.on("--whitelist JSON") { |v| opts[:whitelist] = JSON.parse(v) }
    o.on("--hostname NAME") { |v| opts[:hostname] = v }
    o.on("--sign-version V") { |v| opts[:sign_version] = v }
    o.on("--api-version V") { |v| opts[:api_version] = v }
    o.on("--allow-unencrypted") { opts[:allow_unencrypted] = true }
    o.on("--ca-file PATH") { |v| opts[:ca_file] = v }
  end.parse!
  Thread.abort_on_exception = false
  trap("USR1") do # a report of every thread's backtrace, for diagnosing a hung test
    Thread.new { Thread.list.each { |t| Report.emit("thread", status: t.status, backtrace: (t.backtrace || []).first(6)) } }
  end
  trap("TERM") { exit!(0) } # exit! : no ZMQ context finalizer waiting on open sockets
  client = StockClient.new(opts)
  # zmq_has("curve") straight from the libzmq ffi-rzmq loaded (ffi-rzmq does not bind it)
  zmq_has = FFI::Function.new(:int, [:string], LibZMQ.ffi_libraries.first.find_function("zmq_has"))
  Report.emit("libraries", libzmq: LibZMQ.version.values.join("."), curve: zmq_has.call("curve"),
                           ffi_rzmq: Gem.loaded_specs["ffi-rzmq"]&.version.to_s,
                           mixlib_authentication: Mixlib::Authentication::VERSION)
  client.start
  $stdin.read # until the test closes our stdin (or dies)
  $stdout.flush
  exit!(0)
end
