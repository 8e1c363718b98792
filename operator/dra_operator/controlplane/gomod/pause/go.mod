// The sandbox ("pause") program of the real test nodes; no dependencies.
module dra-operator.local/realnodes/pause

go 1.26.0
