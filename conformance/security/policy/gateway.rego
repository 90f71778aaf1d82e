# The security suite's policy: small on purpose, so every attempt knows exactly what is allowed.
#
# Role "admin" may do everything. Role "user" sees the upstreams in `user_servers` except the items named
# "secret" (tools and prompts) and the resources under sec://<server>/secret: those are hidden, and upstream
# "priv" is hidden whole. Agents with no role ("zero") may list the catalogue and nothing else. Deny rules judge
# every tools/call (admin's too): each guards one argument the suite tries to smuggle past it.
package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": false, "reasons": deny} if {
	count(deny) > 0
} else := {"allow": true, "reasons": []} if {
	grants
}

admin if "admin" in input.agent.roles

user if "user" in input.agent.roles

user_servers := {"pub", "hose", "mine", "sh", "files"}

list_actions := {"tools/list", "prompts/list", "resources/list"}

protocol_actions := {
	"logging/setLevel", "resources/subscribe", "resources/unsubscribe", "completion/complete",
	"notifications/roots/list_changed", "sampling/createMessage", "elicitation/create", "roots/list",
	"notifications/message", "notifications/resources/updated", "notifications/tools/list_changed",
	"notifications/prompts/list_changed", "notifications/resources/list_changed", "notifications/progress",
}

catalogue if {
	input.action in list_actions
	input.tool == null
	input.prompt == null
	input.resource == null
}

hidden_resource(uri) if {
	is_string(uri)
	contains(uri, "/secret")
}

item_visible if {
	input.tool != "secret"
	input.prompt != "secret"
	not hidden_resource(input.resource)
}

default grants := false

grants if admin

grants if catalogue

grants if {
	user
	input.server in user_servers
	input.action in {"tools/list", "tools/call", "prompts/list", "prompts/get", "resources/list", "resources/read"}
	item_visible
}

grants if {
	user
	input.action in protocol_actions
	input.server == null
}

grants if {
	user
	input.action in protocol_actions
	input.server in user_servers
	item_visible
}

# --- deny rules on tools/call: each guards one argument ------------------------------------------------------

args := input.arguments if is_object(input.arguments)

deny contains "command uses shell operators" if {
	input.action == "tools/call"
	is_string(args.command)
	regex.match(`[;|&$]`, args.command)
}

deny contains "ref holds whitespace or an operator" if {
	input.action == "tools/call"
	is_string(args.ref)
	regex.match(`[[:space:];|&]`, args.ref) # [[:space:]] holds \v too (RE2's \s does not)
}

deny contains "an item is bad" if {
	input.action == "tools/call"
	some item in args.items
	item == "bad"
}

deny contains "a value is FORBIDDEN" if {
	input.action == "tools/call"
	walk(input.arguments, [_, v])
	v == "FORBIDDEN"
}

deny contains "a key is evil" if {
	input.action == "tools/call"
	some k, _ in args
	k == "evil"
}

deny contains "n is over 100" if {
	input.action == "tools/call"
	is_number(args.n)
	args.n > 100
}
