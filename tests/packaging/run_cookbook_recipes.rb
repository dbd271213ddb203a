# Test driver: evaluate the push_jobs cookbook's recipes with plain Ruby.
#
# Chef itself is not packaged by Debian (and only PyPI, Debian and npm are
# reachable here), so this is a recorder, not Chef: it runs each recipe's
# Ruby for real -- attributes file, library, include_recipe, every
# expression -- and records the resources the recipes declare (type, name,
# properties, notifications) instead of converging them. That catches what
# `ruby -c` cannot (a wrong helper or attribute name, a bad expression) and
# lets the tests check the resource graph: which resource notifies a restart.
#
# Usage: ruby run_cookbook_recipes.rb COOKBOOK_DIR RECIPE
#   stdin: JSON {"normal": {...node attributes...}, "platform_family": "debian",
#                "chef_config": {...}, "node_name": "...", "chef_environment": "..."}
#   stdout: JSON list of {"type", "name", "properties", "notifies"}
require 'json'

cookbook = File.expand_path(ARGV.fetch(0))
input = JSON.parse($stdin.read)

def deep_merge(a, b)
  a.merge(b) { |_, x, y| x.is_a?(Hash) && y.is_a?(Hash) ? deep_merge(x, y) : y }
end

# `default['a']['b'] = v` in attributes files: autovivifying hashes.
class AttrTree < Hash
  def [](key)
    key = key.to_s
    store(key, AttrTree.new) unless key?(key)
    super(key)
  end

  def []=(key, value)
    super(key.to_s, value)
  end

  def to_plain
    each_with_object({}) { |(k, v), h| h[k] = v.is_a?(AttrTree) ? v.to_plain : v }
  end
end

module Chef
  Config = {}
  module JSONCompat
    def self.to_json_pretty(obj)
      JSON.pretty_generate(obj)
    end
  end
end

class Node
  def initialize(attrs, platform_family, name, environment)
    @attrs = attrs
    @platform_family = platform_family
    @name = name
    @environment = environment
  end

  attr_reader :name

  def [](key)
    key.to_s == 'platform_family' ? @platform_family : @attrs[key.to_s]
  end

  def chef_environment
    @environment
  end
end

# Records one resource's block: every call is a property (or a notification).
class ResourceRecorder
  attr_reader :properties, :notifications

  def initialize
    @properties = {}
    @notifications = []
  end

  def notifies(action, target, timing = :delayed)
    @notifications << { 'action' => action.to_s, 'target' => target, 'timing' => timing.to_s }
  end

  def method_missing(name, *args)
    @properties[name.to_s] = args.length == 1 ? args[0] : args
  end

  def respond_to_missing?(*)
    true
  end
end

class RecipeContext
  RESOURCES = %w(package dpkg_package remote_file directory template file service).freeze

  attr_reader :resources

  def initialize(cookbook, node)
    @cookbook = cookbook
    @node = node
    @resources = []
    @included = {}
  end

  attr_reader :node

  def platform_family?(*families)
    families.map(&:to_s).include?(@node['platform_family'])
  end

  def include_recipe(spec)
    name = spec.split('::', 2)[1] || 'default'
    return if @included[name]
    @included[name] = true
    path = File.join(@cookbook, 'recipes', "#{name}.rb")
    instance_eval(File.read(path), path)
  end

  RESOURCES.each do |type|
    define_method(type) do |name, &block|
      rec = ResourceRecorder.new
      rec.instance_eval(&block) if block
      @resources << { 'type' => type, 'name' => name, 'properties' => rec.properties,
                      'notifies' => rec.notifications }
    end
  end
end

# attributes/default.rb, then the node's own attributes on top (normal level)
default = AttrTree.new
attr_file = File.join(cookbook, 'attributes', 'default.rb')
Kernel.send(:define_method, :default) { default } # `default[...]` in the attributes file
load attr_file
attrs = deep_merge(default.to_plain, input.fetch('normal', {}))
attrs['roles'] ||= input.fetch('roles', [])
attrs['tags'] ||= input.fetch('tags', [])

input.fetch('chef_config', {}).each { |k, v| Chef::Config[k.to_sym] = v }
require File.join(cookbook, 'libraries', 'helpers.rb')

node = Node.new(attrs, input.fetch('platform_family', 'debian'), input.fetch('node_name', 'node1'),
                input.fetch('chef_environment', '_default'))
ctx = RecipeContext.new(cookbook, node)
begin
  ctx.include_recipe("push_jobs::#{ARGV.fetch(1)}")
rescue StandardError => e
  warn "error: #{e.class}: #{e.message}"
  exit 3
end
puts JSON.generate(ctx.resources)
