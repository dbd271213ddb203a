# Test driver: render the push_jobs cookbook's template the way the config
# recipe does, with plain Ruby (no Chef): node['push_jobs'] attributes as JSON
# on stdin (so every key is a String, as with real node attributes), the
# converging chef-client's fallbacks as JSON in ARGV[1]; the rendered file on
# stdout. Usage: ruby render_cookbook_template.rb COOKBOOK_DIR [FALLBACK_JSON]
require 'erb'
require 'json'

cookbook = ARGV.fetch(0)
fallback = ARGV[1] ? JSON.parse(ARGV[1]) : {}
require File.expand_path(File.join(cookbook, 'libraries', 'helpers.rb'))

attrs = JSON.parse($stdin.read)
begin
  settings = PushJobsCookbook::Helpers.agent_settings(attrs, fallback)
rescue ArgumentError => e
  warn "error: #{e.message}"
  exit 3
end
template = File.read(File.join(cookbook, 'templates', 'default', 'push-jobs-client.yml.erb'))
@settings = settings
$stdout.write(ERB.new(template, trim_mode: '-').result(binding))
if ARGV[2]
  File.write(ARGV[2], JSON.pretty_generate(PushJobsCookbook::Helpers.restart_settings(settings)) + "\n")
end
