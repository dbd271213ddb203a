name             'push_jobs'
maintainer       'pushjobs maintainers'
maintainer_email 'pushjobs@localhost'
license          'Apache-2.0'
description      'Installs and configures push-jobs-client, the pushjobs node agent'
version          '6.0.0'
chef_version     '>= 15.0'

%w(debian ubuntu centos redhat rocky almalinux fedora).each do |os|
  supports os
end
