# Test driver: load vagrant/Vagrantfile without Vagrant. `Vagrant.configure`
# runs its block against a recorder (every call is logged with its path, e.g.
# "vm.define", and blocks are run too), so the whole file executes; prints
# JSON {"calls": [[path, args], ...], "server_script": ..., "node_script": ...}.
require 'json'

LOG = []

class Recorder
  def initialize(path)
    @path = path
  end

  def method_missing(name, *args, **kwargs, &block)
    path = (@path + [name.to_s]).join('.')
    LOG << [path, args.map(&:to_s), kwargs.transform_keys(&:to_s).transform_values(&:to_s)]
    block&.call(Recorder.new([]))
    Recorder.new(@path + [name.to_s])
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  def self.configure(version)
    raise "unexpected Vagrant config version #{version}" unless version == '2'
    yield Recorder.new([])
  end
end

load File.expand_path(ARGV.fetch(0))
puts JSON.generate('calls' => LOG, 'server_script' => SERVER_SCRIPT, 'node_script' => NODE_SCRIPT,
                   'nodes' => NODES, 'server_ip' => SERVER_IP, 'org' => LAB_ORG)
