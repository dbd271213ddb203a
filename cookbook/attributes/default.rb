#
# Attributes of the push_jobs cookbook. Names follow the original push-jobs
# cookbook (5.3.2) where the setting exists there; new settings sit beside them.
#

# --- package (recipe push_jobs::install) ---
# Where the push-jobs-client package comes from, first match wins:
#   package_url        download it (remote_file; set package_checksum, SHA-256)
#   local_package_path a .deb/.rpm already on the node
#   otherwise          the node's configured package repositories (apt/yum)
default['push_jobs']['package_url'] = nil
default['push_jobs']['package_checksum'] = nil
default['push_jobs']['local_package_path'] = nil
# Pin a version from the repository (nil = whatever is available). The
# package is installed, never upgraded behind your back: bump this to upgrade.
default['push_jobs']['package_version'] = nil
default['push_jobs']['package_name'] = 'push-jobs-client'
default['push_jobs']['service_name'] = 'push-jobs-client'

# --- settings file (recipe push_jobs::config) ---
default['push_jobs']['config_path'] = '/etc/push-jobs-client/push-jobs-client.yml'
# A cookbook supplying push-jobs-client.yml.erb instead of this one.
default['push_jobs']['config']['template_cookbook'] = nil

# The commands this node may run: job command name => command line, or
# => { 'command_line' => ..., 'lock' => true | '/path' }. String keys work
# (node attributes only have string keys); '/regex/' keys are regexes.
# Changing the whitelist does NOT restart the agent: it re-reads the file.
default['push_jobs']['whitelist'] = { 'chef-client' => 'chef-client' }

default['push_jobs']['file_dir'] = '/tmp/chef-push'
default['push_jobs']['allow_unencrypted'] = false
default['push_jobs']['logging_level'] = 'info'
# nil = stdout, i.e. the systemd journal.
default['push_jobs']['log_location'] = nil

# Facts the node reports for searches. nil = the node's own
# (node.chef_environment, node['roles'], node['tags']).
default['push_jobs']['environment'] = nil
default['push_jobs']['roles'] = nil
default['push_jobs']['tags'] = nil

# --- identity and server ---
# nil = the converging chef-client's own Chef::Config values.
default['push_jobs']['chef']['chef_server_url'] = nil
default['push_jobs']['chef']['node_name'] = nil
default['push_jobs']['chef']['client_key_path'] = '/etc/chef/client.pem'
default['push_jobs']['chef']['verify_api_cert'] = true
default['push_jobs']['chef']['ssl_verify_mode'] = :verify_peer
# A CA bundle (file or directory) for the server's certificate.
default['push_jobs']['chef']['trusted_certs_path'] = nil

# Extra agent settings rendered as-is (e.g. 'http_timeout' => 10).
default['push_jobs']['extra_settings'] = {}
