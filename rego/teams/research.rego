# Team "research": read-only agents. They may read the time, never convert it, and work only in office hours.
package gateway.teams.research

import data.gateway.lib
import rego.v1

deny contains "research agents may not use convert_time" if {
	input.action == "tools/call"
	input.tool == "convert_time"
}

deny contains msg if {
	input.action == "tools/call"
	not lib.hour_utc in data.teams.research.hours_utc
	msg := sprintf("outside research working hours (hour %v UTC)", [lib.hour_utc])
}

grants if lib.catalogue_request

grants if {
	input.action in {"tools/list", "tools/call"}
	input.server == "time"
	input.tool in {"get_current_time", "convert_time"}
}

decision := lib.decision_from(deny, grants)
