# The conformance run's own policy: the suite connects without credentials, as the anonymous identity
# "conformance", and may use the fixture upstream only (every action the gateway relays). Anything else,
# for any identity, is denied.
package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["the conformance identity may use the fixture upstream only"]}

decision := {"allow": true, "reasons": []} if {
	input.agent.auth == "anonymous"
	input.agent.id == "conformance"
	input.server == "fixture"
}
