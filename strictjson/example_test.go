package strictjson_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/thresholdtunnel/threshold/strictjson"
)

type ClientConfig struct {
	ClientId                string
	ServerTunnelControlPort int
	ServiceToLocalAddrMap   map[string]string
}

// A config file: read it through a limit, decode, and report every
// problem with its line and column.
func Example_configFile() {
	path := filepath.Join(os.TempDir(), "strictjson-example-client.json")
	os.WriteFile(path, []byte(`{
  "ClientID": "home",
  "ServerTunnelControlPort": "9056",
  "ServiceToLocalAddrMap": { "web": "127.0.0.1:9001", "web": "127.0.0.1:9002" }
}`), 0o600)
	defer os.Remove(path)

	f, err := os.Open(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err == nil && len(data) > 1<<20 {
		err = errors.New("larger than 1 MiB")
	}
	var c ClientConfig
	if err == nil {
		err = strictjson.Unmarshal(data, &c)
	}
	if err != nil {
		fmt.Printf("config %s: %v\n", filepath.Base(path), err)
	}
	// Output:
	// config strictjson-example-client.json: 3 problems in JSON:
	// 	line 2, column 3 (offset 4): ClientID: unknown field "ClientID"; did you mean "ClientId"? (names are case-sensitive)
	// 	line 3, column 30 (offset 53): ServerTunnelControlPort: want an integer, got a string
	// 	line 4, column 55 (offset 115): ServiceToLocalAddrMap["web"]: duplicate key "web": first at line 4, column 30
}

// An API body: bound the body, decode, and return the problems as a list.
func Example_httpBody() {
	type tunnel struct {
		ListenPort     int
		BackEndService string
	}
	handler := func(w http.ResponseWriter, r *http.Request) {
		var ts []tunnel
		err := strictjson.Decode(http.MaxBytesReader(w, r.Body, 1<<20), &ts)
		var e *strictjson.Error
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &e):
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]any{"Error": "invalid JSON", "Problems": e.Problems, "More": e.More})
		case errors.As(err, &tooBig):
			http.Error(w, "body larger than 1 MiB", http.StatusRequestEntityTooLarge)
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			fmt.Fprintf(w, "%d tunnels\n", len(ts))
		}
	}

	rec := httptest.NewRecorder()
	handler(rec, httptest.NewRequest("PUT", "/tunnels", strings.NewReader(`[{"ListenPort": 443, "BackendService": "web"}]`)))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output:
	// 400 {"Error":"invalid JSON","More":0,"Problems":[{"Kind":"case","Path":"[0].BackendService","Line":1,"Column":22,"Offset":21,"Message":"unknown field \"BackendService\"; did you mean \"BackEndService\"? (names are case-sensitive)"}]}
}
