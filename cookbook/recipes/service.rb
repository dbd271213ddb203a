#
# Cookbook:: push_jobs
# Recipe:: service
#
# Enables and starts the agent's systemd unit (shipped by the package). The
# restart on settings changes is notified by push_jobs::config (never for a
# whitelist-only change).
#
service node['push_jobs']['service_name'] do
  supports status: true, restart: true
  action [:enable, :start]
end
