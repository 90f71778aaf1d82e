# The Rego subset the embedded engine supports (docs/policy.md), one check per construct: input.check names it,
# input.a holds its arguments, and the decision carries the value. conformance/run policy decides every vector
# in subset_test.yaml on every engine available; all must agree with the expected values.
package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["undefined"]}

decision := {"allow": true, "reasons": [], "value": v} if v := value

a := input.a

# --- strings ----------------------------------------------------------------------------------------------------
value := concat(a[0], a[1]) if input.check == "concat"
value := contains(a[0], a[1]) if input.check == "contains"
value := startswith(a[0], a[1]) if input.check == "startswith"
value := endswith(a[0], a[1]) if input.check == "endswith"
value := lower(a[0]) if input.check == "lower"
value := upper(a[0]) if input.check == "upper"
value := split(a[0], a[1]) if input.check == "split"
value := replace(a[0], a[1], a[2]) if input.check == "replace"
value := strings.replace_n(a[0], a[1]) if input.check == "strings.replace_n"
value := trim(a[0], a[1]) if input.check == "trim"
value := trim_space(a[0]) if input.check == "trim_space"
value := trim_prefix(a[0], a[1]) if input.check == "trim_prefix"
value := trim_suffix(a[0], a[1]) if input.check == "trim_suffix"
value := substring(a[0], a[1], a[2]) if input.check == "substring"
value := indexof(a[0], a[1]) if input.check == "indexof"
value := format_int(a[0], a[1]) if input.check == "format_int"
value := sprintf("%v of %d at %.1f", [a[0], a[1], a[2]]) if input.check == "sprintf"
value := strings.any_prefix_match(a[0], a[1]) if input.check == "strings.any_prefix_match"
value := strings.any_suffix_match(a[0], a[1]) if input.check == "strings.any_suffix_match"
value := count(a[0]) if input.check == "count"

# --- regex and glob (ECMAScript regex in the embedded engine: no (?i), no named groups, no \pL) -----------------
value := regex.match(a[0], a[1]) if input.check == "regex.match"
value := regex.split(a[0], a[1]) if input.check == "regex.split"
value := regex.find_n(a[0], a[1], a[2]) if input.check == "regex.find_n"
value := regex.find_all_string_submatch_n(a[0], a[1], a[2]) if input.check == "regex.find_all_string_submatch_n"
value := regex.replace(a[0], a[1], a[2]) if input.check == "regex.replace"
value := regex.is_valid(a[0]) if input.check == "regex.is_valid"
value := glob.match(a[0], a[1], a[2]) if input.check == "glob.match"

# --- numbers ----------------------------------------------------------------------------------------------------
value := to_number(a[0]) if input.check == "to_number"
value := floor(a[0]) if input.check == "floor"
value := ceil(a[0]) if input.check == "ceil"
value := round(a[0]) if input.check == "round"
value := abs(a[0]) if input.check == "abs"
value := numbers.range(a[0], a[1]) if input.check == "numbers.range"
value := sum(a[0]) if input.check == "sum"
value := max(a[0]) if input.check == "max"
value := min(a[0]) if input.check == "min"
value := a[0] / a[1] if input.check == "divide"
value := a[0] % a[1] if input.check == "modulo"
value := units.parse_bytes(a[0]) if input.check == "units.parse_bytes"

# --- arrays, sets, objects, types ---------------------------------------------------------------------------------
value := array.concat(a[0], a[1]) if input.check == "array.concat"
value := array.slice(a[0], a[1], a[2]) if input.check == "array.slice"
value := sort(a[0]) if input.check == "sort"
value := {x | some x in a[0]} | {x | some x in a[1]} if input.check == "set.union"
value := {x | some x in a[0]} & {x | some x in a[1]} if input.check == "set.intersection"
value := {x | some x in a[0]} - {x | some x in a[1]} if input.check == "set.difference"
value := object.get(a[0], a[1], a[2]) if input.check == "object.get"
value := object.union(a[0], a[1]) if input.check == "object.union"
value := object.remove(a[0], a[1]) if input.check == "object.remove"
value := object.filter(a[0], a[1]) if input.check == "object.filter"
value := object.keys(a[0]) if input.check == "object.keys"
value := type_name(a[0]) if input.check == "type_name"
value := [is_string(a[0]), is_number(a[0]), is_object(a[0]), is_array(a[0]), is_boolean(a[0]), is_null(a[0])] if {
	input.check == "is_type"
}

# --- encodings, hashes, versions ----------------------------------------------------------------------------------
value := json.marshal(a[0]) if input.check == "json.marshal"
value := json.unmarshal(a[0]) if input.check == "json.unmarshal"
value := json.is_valid(a[0]) if input.check == "json.is_valid"
value := base64.encode(a[0]) if input.check == "base64.encode"
value := base64.decode(a[0]) if input.check == "base64.decode"
value := base64url.encode(a[0]) if input.check == "base64url.encode"
value := hex.encode(a[0]) if input.check == "hex.encode"
value := crypto.sha256(a[0]) if input.check == "crypto.sha256"
value := crypto.hmac.sha256(a[0], a[1]) if input.check == "crypto.hmac.sha256"
value := semver.compare(a[0], a[1]) if input.check == "semver.compare"
value := semver.is_valid(a[0]) if input.check == "semver.is_valid"

# --- time (from input.request.time_ns, never time.now_ns, so results are reproducible) -------------------------
value := time.clock(a[0]) if input.check == "time.clock"
value := time.weekday(a[0]) if input.check == "time.weekday"
value := time.date(a[0]) if input.check == "time.date"
value := time.parse_rfc3339_ns(a[0]) if input.check == "time.parse_rfc3339_ns"
value := time.parse_duration_ns(a[0]) if input.check == "time.parse_duration_ns"
value := time.add_date(a[0], a[1], a[2], a[3]) if input.check == "time.add_date"

# --- the language -------------------------------------------------------------------------------------------------
value := {x | some x in a[0]; x > a[1]} if input.check == "set comprehension"
value := [y | some x in a[0]; y := x * 2] if input.check == "array comprehension"
value := {k: v | some k, v in a[0]; v != null} if input.check == "object comprehension"
value := true if {
	input.check == "every"
	every x in a[0] { x > a[1] }
}
value := false if {
	input.check == "every"
	not every_above
}
every_above if {
	every x in a[0] { x > a[1] }
}
value := a[1] in a[0] if input.check == "in"
value := [i, x] if {
	input.check == "some index"
	some i, x in a[0]
	x == a[1]
}
value := grade(a[0]) if input.check == "else"
grade(n) := "high" if n >= 10
else := "mid" if n >= 5
else := "low"
value := kinds if input.check == "partial set"
kinds contains "even" if {
	some x in a[0]
	x % 2 == 0
}
kinds contains "odd" if {
	some x in a[0]
	x % 2 == 1
}
value := labels if input.check == "partial object"
labels[k] := upper(v) if some k, v in a[0]
value := not_member if input.check == "not"
default not_member := false
not_member if not a[1] in a[0]
value := bound_key(a[1]) if input.check == "function argument bound before a comprehension"
bound_key(k) := {x | some x in a[0][key]} if key := k
value := missing_is_not_string if input.check == "not with object.get"
default missing_is_not_string := false
missing_is_not_string if not is_string(object.get(a[0], "missing", null))
