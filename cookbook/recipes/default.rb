#
# Cookbook:: push_jobs
# Recipe:: default
#
# Installs the push-jobs-client package, writes its settings from node
# attributes and runs the agent.
#
whitelist = node['push_jobs']['whitelist']
unless whitelist.is_a?(Hash) || whitelist.respond_to?(:to_hash)
  raise "node['push_jobs']['whitelist'] must be a Hash, got #{whitelist.class}"
end

unless %w(debian rhel fedora amazon).include?(node['platform_family'])
  raise "push_jobs: platform family #{node['platform_family']} is not supported"
end

include_recipe 'push_jobs::install'
include_recipe 'push_jobs::config'
include_recipe 'push_jobs::service'
