#
# Pure-Ruby helpers (no Chef constants at load time, so the cookbook's tests
# can load this file with plain `ruby`): turn node attributes into the agent
# settings that templates/default/push-jobs-client.yml.erb renders.
#
module PushJobsCookbook
  module Helpers
    # Agent settings a change of which needs an agent restart. The whitelist
    # is not among them: the agent re-reads it from the file by itself.
    def self.restart_settings(settings)
      settings.reject { |key, _| key == 'whitelist' }
    end

    # Plain Ruby data (String keys, no Symbols or Regexps, no attribute
    # Mash classes) that YAML renders without Ruby-specific tags.
    def self.plain(value)
      case value
      when Hash
        value.each_with_object({}) { |(k, v), out| out[plain_key(k)] = plain(v) }
      when Array
        value.map { |v| plain(v) }
      when Symbol
        value.to_s
      when Regexp
        regexp_key(value)
      when String, Integer, Float, TrueClass, FalseClass, NilClass
        value
      else
        if value.respond_to?(:to_hash)
          plain(value.to_hash)
        elsif value.respond_to?(:to_a)
          plain(value.to_a)
        else
          value.to_s
        end
      end
    end

    def self.plain_key(key)
      key.is_a?(Regexp) ? regexp_key(key) : key.to_s
    end

    # A Regexp as the agent's whitelist spells it: /source/flags.
    def self.regexp_key(re)
      flags = ''
      flags << 'i' if (re.options & Regexp::IGNORECASE) != 0
      flags << 'm' if (re.options & Regexp::MULTILINE) != 0
      flags << 'x' if (re.options & Regexp::EXTENDED) != 0
      "/#{re.source}/#{flags}"
    end

    # The whitelist from node['push_jobs']['whitelist']. The original cookbook
    # handed Ruby hash entries to the client, which only understood Symbol
    # keys (:command_line, :lock); node attributes always carry String keys,
    # so such entries failed at run time. Here every key becomes a String
    # and the agent reads String keys.
    def self.whitelist(attrs)
      wl = attrs['whitelist']
      unless wl.is_a?(Hash) || wl.respond_to?(:to_hash)
        raise ArgumentError, "node['push_jobs']['whitelist'] must be a Hash, got #{wl.class}"
      end
      plain(wl).each_with_object({}) do |(name, entry), out|
        if entry.is_a?(Hash)
          unknown = entry.keys - %w(command_line lock)
          unless unknown.empty?
            raise ArgumentError, "whitelist entry #{name}: unknown keys #{unknown.join(', ')}"
          end
          unless entry['command_line'].is_a?(String) && !entry['command_line'].empty?
            raise ArgumentError, "whitelist entry #{name}: command_line must be a non-empty string"
          end
        elsif !entry.is_a?(String) || entry.empty?
          raise ArgumentError, "whitelist entry #{name}: expected a command line or a Hash"
        end
        out[name] = entry
      end
    end

    # All agent settings, in the order the template writes them.
    #   attrs    node['push_jobs']
    #   fallback values of the converging chef-client: 'chef_server_url',
    #            'node_name', 'environment', 'roles', 'tags'
    def self.agent_settings(attrs, fallback = {})
      chef = attrs['chef'] || {}
      settings = {
        'chef_server_url' => chef['chef_server_url'] || fallback['chef_server_url'],
        'node_name' => chef['node_name'] || fallback['node_name'],
        'client_key' => chef['client_key_path'],
        'verify_tls' => chef['verify_api_cert'] != false &&
                        chef['ssl_verify_mode'].to_s.sub(/\A:/, '') != 'verify_none',
        'ca_file' => chef['trusted_certs_path'],
        'allow_unencrypted' => attrs['allow_unencrypted'] ? true : false,
        'file_dir' => attrs['file_dir'],
        'log_level' => (attrs['logging_level'] || 'info').to_s,
        'log_location' => attrs['log_location'],
        'environment' => attrs['environment'] || fallback['environment'],
        'roles' => attrs['roles'] || fallback['roles'],
        'tags' => attrs['tags'] || fallback['tags'],
      }
      plain(attrs['extra_settings'] || {}).each { |k, v| settings[k] = v }
      settings['whitelist'] = whitelist(attrs)
      plain(settings).reject { |_, v| v.nil? }
    end
  end
end
