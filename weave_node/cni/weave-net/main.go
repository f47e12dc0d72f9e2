// weave-net: the CNI plugin (spec 0.3.0 to 1.1.0: ADD, DEL, CHECK, STATUS, GC, VERSION), a small static client of
// the weave-node router's unix-socket API. Every decision is the router's (IPAM, netlink, rollback): this program
// validates its input, asks the router, and prints the spec's result for the requested version. Errors are the
// spec's error JSON on stdout with its exit code 1, never a panic trace. A DEL while the router is down is recorded
// in the pending directory (temp file, fsync, rename, fsync the directory) and completed by the router when it
// returns: an address is never leaked.
//
// Built with the standard library only, CGO_ENABLED=0, so it runs on a node whose root filesystem has no Python
// and no C library (weave_node/cni/gobuild.py builds it; our wheel carries it).
//
// Network configuration fields besides cniVersion/name/type: "socket" (default /run/weave-node/weave.sock),
// "pendingDir" (default /var/lib/weave-node/cni-pending), "hairpinMode" (bool), "dns" (passed through; without
// it the result carries the router's DNS server, when it runs one).
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Kept equal to weave_node/core/cni.py and weave_node/core/facts.py (tests/unit/test_cni_binary.py checks).
var versions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

const (
	latest            = "1.1.0"
	defaultSocket     = "/run/weave-node/weave.sock"
	defaultPendingDir = "/var/lib/weave-node/cni-pending"
	timeout           = 60 * time.Second
	maxResponse       = 1 << 20

	errIncompatibleVersion = 1
	errInvalidEnv          = 4
	errDecode              = 6
	errInvalidConfig       = 7
	errTryAgain            = 11
	errNotAvailable        = 50
	errDatapath            = 100 // plugin-specific: the router could not plumb the pod
	errCheck               = 101 // plugin-specific: CHECK found the pod not as ADD made it
	errInternal            = 999
)

type cniError struct {
	code    int
	msg     string
	details string
}

func (e *cniError) Error() string { return e.msg }

func fail(code int, msg, details string) *cniError { return &cniError{code, msg, details} }

// routerDown: the router could not be reached at all (nothing was asked of it).
type routerDown struct{ reason string }

func (e *routerDown) Error() string { return e.reason }

type obj = map[string]json.RawMessage

func supported(v string) bool {
	for _, s := range versions {
		if s == v {
			return true
		}
	}
	return false
}

// atLeast compares dotted versions numerically (both are supported versions here).
func atLeast(v, min string) bool {
	a, b := strings.Split(v, "."), strings.Split(min, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		var x, y int
		fmt.Sscan(a[i], &x)
		fmt.Sscan(b[i], &y)
		if x != y {
			return x > y
		}
	}
	return len(a) >= len(b)
}

type conf struct {
	raw        obj
	version    string
	socket     string
	pendingDir string
	hairpin    bool
}

func str(raw json.RawMessage) (string, bool) {
	var s string
	if raw == nil || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// object decodes a JSON document once: an error when it is not JSON, a nil map when it is JSON of another kind
// (null, a list, a number...).
func object(data []byte) (obj, error) {
	var doc obj
	err := json.Unmarshal(data, &doc)
	if _, other := err.(*json.UnmarshalTypeError); other {
		return nil, nil
	}
	return doc, err
}

func isNull(raw json.RawMessage) bool { return raw == nil || string(bytes.TrimSpace(raw)) == "null" }

func parseConf(stdin []byte) (*conf, error) {
	if len(bytes.TrimSpace(stdin)) == 0 {
		return nil, fail(errDecode, "no network configuration on stdin", "")
	}
	raw, err := object(stdin)
	if err != nil {
		return nil, fail(errDecode, "the network configuration is not valid JSON", err.Error())
	}
	if raw == nil {
		return nil, fail(errInvalidConfig, "the network configuration must be a JSON object", "")
	}
	version, ok := str(raw["cniVersion"])
	if !ok || version == "" {
		return nil, fail(errInvalidConfig, "cniVersion is missing", "")
	}
	if !supported(version) {
		return nil, fail(errIncompatibleVersion, "incompatible CNI version "+version,
			"weave-net supports "+strings.Join(versions, ", "))
	}
	c := &conf{raw: raw, version: version, socket: defaultSocket, pendingDir: defaultPendingDir}
	for _, f := range []struct {
		name string
		dest *string
	}{{"socket", &c.socket}, {"pendingDir", &c.pendingDir}} {
		if v, present := raw[f.name]; present {
			s, ok := str(v)
			if !ok || !strings.HasPrefix(s, "/") {
				return nil, fail(errInvalidConfig, fmt.Sprintf("'%s' must be an absolute path", f.name), "")
			}
			*f.dest = s
		}
	}
	if v, present := raw["hairpinMode"]; present {
		if isNull(v) || json.Unmarshal(v, &c.hairpin) != nil {
			return nil, fail(errInvalidConfig, "'hairpinMode' must be true or false", "")
		}
	}
	return c, nil
}

func env(names ...string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, name := range names {
		v := os.Getenv(name)
		if v == "" {
			return nil, fail(errInvalidEnv, name+" is not set", "")
		}
		out = append(out, v)
	}
	return out, nil
}

func clip(s string) string {
	if len(s) > 100 {
		return s[:100]
	}
	return s
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

func attachment() (string, string, error) {
	v, err := env("CNI_CONTAINERID", "CNI_IFNAME")
	if err != nil {
		return "", "", err
	}
	cid, ifname := v[0], v[1]
	valid := alnum(cid[0]) && len(cid) <= 255
	for i := 0; valid && i < len(cid); i++ {
		valid = alnum(cid[i]) || strings.IndexByte("_.-", cid[i]) >= 0
	}
	if !valid {
		return "", "", fail(errInvalidEnv, "CNI_CONTAINERID is not a valid container id", clip(cid))
	}
	if len(ifname) > 15 || ifname == "." || ifname == ".." || strings.ContainsAny(ifname, "/: \t\n\r\v\f") {
		return "", "", fail(errInvalidEnv, "CNI_IFNAME is not a valid interface name", clip(ifname))
	}
	return cid, ifname, nil
}

func netns() (string, error) {
	v, err := env("CNI_NETNS")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(v[0]); err != nil {
		return "", fail(errInvalidEnv, "CNI_NETNS "+v[0]+" does not exist", "")
	}
	return v[0], nil
}

// podInNetns: the attachment of ADD and CHECK, whose network namespace must exist.
func podInNetns() (string, string, string, error) {
	cid, ifname, err := attachment()
	if err != nil {
		return "", "", "", err
	}
	ns, err := netns()
	return cid, ifname, ns, err
}

// call makes one HTTP/1.1 request over the router's unix socket. routerDown only when the socket could not be
// reached; a failure after the request was sent is "try again later" (the router may have done the work).
func call(sock, method, path string, body interface{}) (int, obj, error) {
	conn, err := net.DialTimeout("unix", sock, timeout)
	if err != nil {
		reason := err.Error()
		if op, ok := err.(*net.OpError); ok && op.Err != nil {
			reason = op.Err.Error()
			if se, ok := op.Err.(*os.SyscallError); ok {
				reason = se.Err.Error()
			}
		}
		return 0, nil, &routerDown{"the weave-node router is not reachable at " + sock + ": " + reason}
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, path, len(data))
	if _, err := conn.Write(append([]byte(head), data...)); err != nil {
		return 0, nil, fail(errTryAgain, "the router did not answer: try again later", err.Error())
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() || err == io.EOF || err == io.ErrUnexpectedEOF {
			return 0, nil, fail(errTryAgain, "the router did not answer: try again later", err.Error())
		}
		return 0, nil, fail(errInternal, "the router sent a malformed HTTP response", err.Error())
	}
	defer resp.Body.Close()
	payload, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return 0, nil, fail(errTryAgain, "the router did not answer: try again later", err.Error())
	}
	if len(payload) > maxResponse {
		return 0, nil, fail(errTryAgain, "the router's answer is too large or too slow: try again later", "")
	}
	doc, err := object(payload) // nil: a JSON value that is not an object
	if err != nil {
		return 0, nil, fail(errInternal,
			fmt.Sprintf("the router answered %d with something that is not JSON", resp.StatusCode), "")
	}
	return resp.StatusCode, doc, nil
}

func routerError(status int, doc obj, what string) error {
	msg := fmt.Sprintf("HTTP %d", status)
	if doc != nil {
		if v, present := doc["error"]; present {
			if s, ok := str(v); ok {
				msg = s
			} else {
				msg = string(v)
			}
		}
	}
	switch status {
	case 503:
		return fail(errTryAgain, what+": try again later", msg)
	case 400:
		return fail(errInvalidConfig, what+": refused", msg)
	}
	return fail(errDatapath, what+" failed", msg)
}

// podIP is one family's address of a pod and its gateway (the router's "ips", IPv4 first).
type podIP struct {
	Cidr    string `json:"cidr"`
	Gateway string `json:"gateway"`
}

type addAnswer struct {
	Mac        string          `json:"mac"`
	Mtu        json.RawMessage `json:"mtu"`
	Cidr       string          `json:"cidr"`
	Gateway    string          `json:"gateway"`
	Ips        []podIP         `json:"ips"`
	HostIfname string          `json:"host_ifname"`
	HostMac    string          `json:"host_mac"`
	Dns        json.RawMessage `json:"dns"`
}

// podArgs are the CNI_ARGS pairs the router names a pod by in its DNS (K8S_POD_NAME, K8S_POD_NAMESPACE: what
// containerd's CRI and cnitool users pass). Other pairs, and malformed ones, are not ours to judge: ignored.
func podArgs() map[string]string {
	out := map[string]string{}
	for _, pair := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		k, v, found := strings.Cut(pair, "=")
		if found && (k == "K8S_POD_NAME" || k == "K8S_POD_NAMESPACE") && len(v) <= 253 {
			out[k] = v
		}
	}
	return out
}

type kv struct {
	key   string
	value interface{}
}

// ordered is a JSON object that keeps its keys in the order given (the spec's examples' order).
type ordered []kv

func (o ordered) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, e := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(e.key)
		v, err := json.Marshal(e.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func result(c *conf, a *addAnswer, ifname, ns string) ordered {
	pod := ordered{{"name", ifname}, {"mac", a.Mac}, {"sandbox", ns}}
	if atLeast(c.version, "1.1.0") {
		pod = append(pod, kv{"mtu", a.Mtu})
	}
	addrs := a.Ips
	if len(addrs) == 0 { // a router from before dual-stack
		addrs = []podIP{{a.Cidr, a.Gateway}}
	}
	var ips, routes []interface{}
	for _, p := range addrs {
		ip := ordered{{"address", p.Cidr}, {"gateway", p.Gateway}, {"interface", 1}}
		dst, version := "0.0.0.0/0", "4"
		if strings.Contains(p.Cidr, ":") {
			dst, version = "::/0", "6"
		}
		if !atLeast(c.version, "1.0.0") {
			ip = append(ip, kv{"version", version})
		}
		ips = append(ips, ip)
		routes = append(routes, ordered{{"dst", dst}, {"gw", p.Gateway}})
	}
	// The network configuration's own "dns" wins; else the router's server (when it runs one); else none.
	var dns interface{} = map[string]interface{}{}
	if d := c.raw["dns"]; d != nil && bytes.HasPrefix(bytes.TrimSpace(d), []byte("{")) {
		dns = d
	} else if bytes.HasPrefix(bytes.TrimSpace(a.Dns), []byte("{")) {
		dns = a.Dns
	}
	return ordered{
		{"cniVersion", c.version},
		{"interfaces", []interface{}{ordered{{"name", a.HostIfname}, {"mac", a.HostMac}}, pod}},
		{"ips", ips},
		{"routes", routes},
		{"dns", dns},
	}
}

// pendingName is weave_node.core.cni.pending_name: the file a pending DEL of this attachment is recorded in.
func pendingName(cid, ifname string) string {
	sum := sha256.Sum256([]byte(cid + "/" + ifname))
	return hex.EncodeToString(sum[:])[:32] + ".json"
}

func recordPendingDel(dir, cid, ifname, ns string) error {
	// Missing parents as mkdir -p makes them (0755, e.g. /var/lib/weave-node before the router ever ran); the
	// directory itself 0700.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fail(errInternal, "cannot create pendingDir "+dir, err.Error())
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return fail(errInternal, "cannot create pendingDir "+dir, err.Error())
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFDIR ||
		int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return fail(errInvalidConfig, "pendingDir "+dir+" must be a directory of ours, writable only by us", "")
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fail(errInternal, "cannot record the DEL in "+dir, err.Error())
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".del-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:])))
	doc, _ := json.Marshal(ordered{{"container_id", cid}, {"ifname", ifname}, {"netns", ns}})
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(errInternal, "cannot record the DEL in "+dir, err.Error())
	}
	_, werr := f.Write(doc)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, filepath.Join(dir, pendingName(cid, ifname)))
	}
	if werr != nil {
		os.Remove(tmp)
		return fail(errInternal, "cannot record the DEL in "+dir, werr.Error())
	}
	d, err := os.Open(dir)
	if err != nil {
		return fail(errInternal, "cannot record the DEL in "+dir, err.Error())
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fail(errInternal, "cannot record the DEL in "+dir, err.Error())
	}
	return nil
}

func cmdAdd(c *conf, out io.Writer) error {
	if !isNull(c.raw["prevResult"]) {
		return fail(errInvalidConfig, "weave-net must be the first plugin of its chain (it got a prevResult)", "")
	}
	cid, ifname, ns, err := podInNetns()
	if err != nil {
		return err
	}
	body := ordered{{"container_id", cid}, {"ifname", ifname}, {"netns", ns}, {"hairpin", c.hairpin}, {"args", podArgs()}}
	status, doc, err := call(c.socket, "POST", "/cni/add", body)
	if err != nil {
		return err
	}
	if status != 200 {
		return routerError(status, doc, "ADD "+cid+"/"+ifname)
	}
	var a addAnswer
	whole, _ := json.Marshal(doc)
	if doc == nil || json.Unmarshal(whole, &a) != nil || a.Cidr == "" || a.Gateway == "" {
		return fail(errInternal, "the router's answer to ADD lacks the pod's address", clip(string(whole)))
	}
	return writeJSON(out, result(c, &a, ifname, ns))
}

func cmdDel(c *conf, out io.Writer) error {
	cid, ifname, err := attachment()
	if err != nil {
		return err
	}
	ns := os.Getenv("CNI_NETNS")
	status, doc, err := call(c.socket, "POST", "/cni/del", ordered{{"container_id", cid}, {"ifname", ifname}, {"netns", ns}})
	if _, down := err.(*routerDown); down {
		return recordPendingDel(c.pendingDir, cid, ifname, ns) // the router completes it when it is back
	}
	if err != nil {
		return err
	}
	if status != 200 {
		return routerError(status, doc, "DEL "+cid+"/"+ifname)
	}
	return nil
}

func cmdCheck(c *conf, out io.Writer) error {
	cid, ifname, ns, err := podInNetns()
	if err != nil {
		return err
	}
	var prev obj
	if json.Unmarshal(c.raw["prevResult"], &prev) != nil || prev == nil {
		return fail(errInvalidConfig, "CHECK needs the prevResult of ADD in the configuration", "")
	}
	// The addresses ADD gave our interface: prevResult's ips whose "interface" is our ifname in this sandbox
	// (a later plugin of the chain may have added others, for interfaces of its own).
	want := []json.RawMessage{}
	var ips, ifaces []obj
	json.Unmarshal(prev["interfaces"], &ifaces)
	if json.Unmarshal(prev["ips"], &ips) == nil {
		for _, ip := range ips {
			var idx int
			if ip == nil || json.Unmarshal(ip["interface"], &idx) != nil || idx < 0 || idx >= len(ifaces) ||
				ifaces[idx] == nil {
				continue
			}
			name, _ := str(ifaces[idx]["name"])
			sandbox, _ := str(ifaces[idx]["sandbox"])
			if v, present := ip["address"]; present && name == ifname && sandbox != "" {
				want = append(want, v)
			}
		}
	}
	body := ordered{{"container_id", cid}, {"ifname", ifname}, {"netns", ns}, {"ips", want}}
	status, doc, err := call(c.socket, "POST", "/cni/check", body)
	if err != nil {
		return err
	}
	if status == 409 {
		details, _ := str(doc["error"])
		return fail(errCheck, "CHECK failed", details)
	}
	if status != 200 {
		return routerError(status, doc, "CHECK "+cid+"/"+ifname)
	}
	return nil
}

func cmdStatus(c *conf, out io.Writer) error {
	status, doc, err := call(c.socket, "GET", "/cni/status", nil)
	if err != nil {
		return err
	}
	var ready bool
	json.Unmarshal(doc["ready"], &ready)
	if status != 200 || !ready {
		code := errNotAvailable
		json.Unmarshal(doc["code"], &code)
		reason, ok := str(doc["reason"])
		if !ok && !isNull(doc["reason"]) {
			reason = string(doc["reason"])
		}
		return fail(code, "weave-net is not ready", reason)
	}
	return nil
}

func cmdGC(c *conf, out io.Writer) error {
	var valid []json.RawMessage
	if raw, present := c.raw["cni.dev/valid-attachments"]; present && (isNull(raw) || json.Unmarshal(raw, &valid) != nil) {
		return fail(errInvalidConfig, "cni.dev/valid-attachments must be a list", "")
	}
	keep := make([]interface{}, 0, len(valid))
	for _, entry := range valid {
		var v obj
		_ = json.Unmarshal(entry, &v)
		cid, ok := str(v["containerID"])
		if v == nil || !ok {
			return fail(errInvalidConfig, "every cni.dev/valid-attachments entry needs a containerID", "")
		}
		ifname, _ := str(v["ifname"])
		if ifname == "" {
			ifname = "eth0"
		}
		keep = append(keep, ordered{{"container_id", cid}, {"ifname", ifname}})
	}
	status, doc, err := call(c.socket, "POST", "/cni/gc", ordered{{"valid", keep}})
	if err != nil {
		return err
	}
	if status != 200 {
		return routerError(status, doc, "GC")
	}
	return nil
}

var commands = map[string]func(*conf, io.Writer) error{
	"ADD": cmdAdd, "DEL": cmdDel, "CHECK": cmdCheck, "STATUS": cmdStatus, "GC": cmdGC,
}

func writeJSON(out io.Writer, v interface{}) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fail(errInternal, "internal error in weave-net", err.Error())
	}
	_, err = out.Write(append(b, '\n'))
	return err
}

func run(stdin []byte, out io.Writer) error {
	command := os.Getenv("CNI_COMMAND")
	if command == "VERSION" {
		return writeJSON(out, ordered{{"cniVersion", latest}, {"supportedVersions", versions}})
	}
	if command == "" {
		return fail(errInvalidEnv, "CNI_COMMAND is not set", "weave-net is a CNI plugin: a runtime runs it")
	}
	verb, known := commands[command]
	if !known {
		return fail(errInvalidEnv, fmt.Sprintf("unknown CNI_COMMAND '%s'", clip(command)), "")
	}
	c, err := parseConf(stdin)
	if err != nil {
		return err
	}
	if command == "CHECK" && !atLeast(c.version, "0.4.0") {
		return fail(errIncompatibleVersion, "CHECK is not defined for cniVersion "+c.version, "")
	}
	if (command == "STATUS" || command == "GC") && !atLeast(c.version, "1.1.0") {
		return fail(errIncompatibleVersion, command+" needs cniVersion 1.1.0, not "+c.version, "")
	}
	err = verb(c, out)
	if down, ok := err.(*routerDown); ok {
		if command == "STATUS" {
			return fail(errNotAvailable, "the weave-node router is not running", down.reason)
		}
		return fail(errTryAgain, "the weave-node router is not running: try again later", down.reason)
	}
	return err
}

// versionOf is the version to answer errors in: the configuration's when it is one we speak.
func versionOf(stdin []byte) string {
	doc, _ := object(stdin) // a map: keys match exactly (a struct would match "CNIVERSION" too)
	if v, ok := str(doc["cniVersion"]); ok && supported(v) {
		return v
	}
	return latest
}

func main() {
	var stdin []byte
	if os.Getenv("CNI_COMMAND") != "VERSION" {
		stdin, _ = io.ReadAll(io.LimitReader(os.Stdin, 16<<20))
	}
	version := versionOf(stdin)
	code := 0
	func() {
		defer func() { // never a panic trace: the runtime shows our msg to the user
			if r := recover(); r != nil {
				writeError(version, fail(errInternal, "internal error in weave-net", fmt.Sprint(r)))
				code = 1
			}
		}()
		if err := run(stdin, os.Stdout); err != nil {
			e, ok := err.(*cniError)
			if !ok {
				e = fail(errInternal, "internal error in weave-net", err.Error())
			}
			writeError(version, e)
			code = 1
		}
	}()
	os.Exit(code)
}

func writeError(version string, e *cniError) {
	doc := ordered{{"cniVersion", version}, {"code", e.code}, {"msg", e.msg}}
	if e.details != "" {
		doc = append(doc, kv{"details", e.details})
	}
	b, _ := json.Marshal(doc)
	os.Stdout.Write(append(b, '\n'))
}
