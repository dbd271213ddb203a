#
# Cookbook:: push_jobs
# Recipe:: config
#
# Renders /etc/push-jobs-client/push-jobs-client.yml from node attributes.
#
# Restarts: the template itself notifies nothing, because the agent re-reads
# the whitelist from the file while it runs -- a Chef run that only changes
# the whitelist (for instance one started by a push job) never kills a
# running job. The other settings are also written, as JSON, to a state
# file beside it; only a change there restarts the agent.
#
attrs = node['push_jobs']
service_name = attrs['service_name']
config_path = attrs['config_path']
config_dir = ::File.dirname(config_path)

settings = PushJobsCookbook::Helpers.agent_settings(
  attrs,
  'chef_server_url' => Chef::Config[:chef_server_url],
  'node_name' => Chef::Config[:node_name] || node.name,
  'environment' => node.chef_environment,
  'roles' => node['roles'].to_a,
  'tags' => node['tags'].to_a
)

directory config_dir do
  owner 'root'
  group 'root'
  mode '0755'
end

template config_path do
  source 'push-jobs-client.yml.erb'
  cookbook attrs['config']['template_cookbook'] if attrs['config']['template_cookbook']
  owner 'root'
  group 'root'
  mode '0644'
  variables(settings: settings)
  # no notifies: see the comment at the top
end

file ::File.join(config_dir, '.chef-restart-settings.json') do
  content Chef::JSONCompat.to_json_pretty(PushJobsCookbook::Helpers.restart_settings(settings)) + "\n"
  owner 'root'
  group 'root'
  mode '0644'
  notifies :restart, "service[#{service_name}]", :delayed
end
