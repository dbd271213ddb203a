#
# Cookbook:: push_jobs
# Recipe:: install
#
# The push-jobs-client package from a URL, a local file or the configured
# repositories. The package carries its own Python dependencies (wheels)
# and needs only python3 3.11 and its venv module from the distribution.
#
attrs = node['push_jobs']
pkg_name = attrs['package_name']
pkg_source = nil

if attrs['package_url']
  pkg_source = ::File.join(Chef::Config[:file_cache_path], ::File.basename(attrs['package_url']))
  remote_file pkg_source do
    source attrs['package_url']
    checksum attrs['package_checksum'] if attrs['package_checksum']
    mode '0644'
  end
elsif attrs['local_package_path']
  pkg_source = attrs['local_package_path']
end

if pkg_source && platform_family?('debian')
  # dpkg does not resolve dependencies: install them from the repositories.
  package %w(python3 python3-venv)
  dpkg_package pkg_name do
    source pkg_source
    version attrs['package_version'] if attrs['package_version']
  end
elsif pkg_source
  package pkg_name do
    source pkg_source
    version attrs['package_version'] if attrs['package_version']
  end
else
  package pkg_name do
    version attrs['package_version'] if attrs['package_version']
  end
end
