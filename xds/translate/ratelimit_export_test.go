package translate

// What ratelimit_test.go checks from outside the package.
var (
	XFCCSourceRewrite    = [2]string{xfccSourceRewrite, xfccSourceSubst}
	XFCCPrincipalRewrite = [2]string{xfccPrincipalRewrite, xfccPrincipalSubst}
	MatchHeaders         = matchHeaders
)
